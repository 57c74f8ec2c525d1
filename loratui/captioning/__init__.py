"""Captioning: vision-language captioners and booru taggers behind one small interface,
the loop that writes a caption beside each image, the backup that undoes a run, and the
caption tools (tag counts, find/replace, tag removal, trigger word).

Nothing here imports torch, transformers or onnxruntime at module level: they load
only when a captioner is opened, so the wizard stays quick to start.
"""
