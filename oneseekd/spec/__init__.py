"""The run spec's room, without torch: what intake, `oneseekctl` and the trainer all read.

- `request.py`: the request's options, typed (`RunSpec`), with per-model overrides resolved once;
- `fields.py`: the types of their values (GPUs, memory sizes, optimizers, LoRA targets, ...);
- `names.py`: the admin panel's and train_dna_v2.py's names for them;
- `host.py`: what a host cannot train, each problem with its fix (`check`);
- `memory.py`: the estimated memory of a training step and of the evaluation;
- `plan.py`: the plan for a device built on it from the base's config.json.

Nothing here imports the rest of oneseekd, torch or the database; the imports run one way,
`names`, `fields` -> `request` -> `host`, and `memory` -> `plan`.
"""

# where a run's curves may be reported (a request's `report_to`, `[trainer] report_to`):
# "tensorboard" writes event files under HOME/runs/<run_id>/tensorboard/ (trainer/curves.py).
# Here, with no import, so that the configuration's read path can check it without pydantic.
REPORTERS: tuple[str, ...] = ("tensorboard",)
