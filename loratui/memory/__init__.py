"""How a frozen base model is held in memory, and what that costs.

One description serves both sides: the engine asks it how to store the base
(``model.base_precision``, ``train.blocks_to_swap``, ``train.activation_offload``),
and the planner (Review, ``loratui check``, ``loratui plan``) asks it how many
bytes that storage takes, so the estimate and the real storage cannot drift.
"""
