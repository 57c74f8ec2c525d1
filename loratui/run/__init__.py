"""A run as a service: it outlives the screen that started it.

Every training process (started by the dashboard, ``--headless`` or
``--detach``) listens on a Unix socket in the project (``.loratui/run.sock``)
and writes a small record beside it. Dashboards, ``loratui status`` and
``loratui stop`` are clients of that socket. The engine knows nothing of
sockets: it emits events and reads commands as it always did.

- ``location``: where the socket, the record and the per-user registry live.
- ``lock``: the run lock, an flock the kernel drops when the run's process ends.
- ``record``: the run record and the registry of this user's runs.
- ``server``: the socket server inside the training process.
- ``client``: what the dashboard and the shell commands use to talk to a run.
- ``service``: a training process with its server, record and notifications.
- ``launch``: starting a service in a session of its own (``--detach``, the dashboard).
- ``tracker``: a run's state, step, smoothed loss and ETA, from its events.
- ``status``: one line (or JSON object) per run, live or not.
- ``shell``: the shell commands (``status``, ``stop``, ``pause``, ``resume``, ``logs``).
- ``notify``: the command and webhook run when a run ends; the cost so far.
"""
