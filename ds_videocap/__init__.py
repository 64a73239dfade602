"""ds-videocap: BLIP-2 / InstructBLIP video captioners trained on DeepSpeed (CE and SCST).

The pipeline, in the order a training run goes through it (`ds-videocap train`, train.py):
  run_check.py    every rule across recipe, DeepSpeed JSON and files, before any rank starts;
                  paths.py resolves the user's paths against where they stand
  config.py       the recipe's dataclasses; recipe_rules.py its own rules (validate); recipe_io.py reads
                  YAML recipes with key=value overrides and writes the run's config.yaml
  ds_json.py      the DeepSpeed JSON's facts (ZeRO stage, offload, dtype) and its adaptation to the machine
  engine.py       distributed start/end, every collective, deepspeed.initialize
  prepare.py      after dist init: the synthetic set, the annotation splits, the model folder (its ViT
                  first trained alone on captioned stills by vision_stage.py when vision.steps is set:
                  stills.py reads them, vision_weights.py writes the ViT back into a folder), the
                  model, the CIDEr-D reward
  annotations.py  MSR-VTT / MSVD / VATEX / LAVIS / JSONL readers -> Clip records
  video.py, data.py   frame sampling and decoding; dataset, collate, resumable distributed sampler
  build.py        a Hugging Face folder (or a tiny one built in code) -> VideoCaptioner (model.py;
                  motion.py's frame-difference tokens when model.motion_tokens), with processor.py's
                  image settings, trainable.py's LoRA / frozen parts and quantize.py's bitsandbytes settings
  optim.py        AdamW or CPU Adam, the lr schedule, the optimizer settings at the phase change
  loop.py         fit(): the one loop; backward, step and the non-finite rule for both phases
  ce.py, scst.py  the step functions (a micro-batch -> loss, metrics); ce.py may add align.py's
                  contrastive term (its "cooccur" text side from cooccur.py, built in prepare.py) and
                  words.py's word head; scst.py rolls out inside generation.py's context, scores with
                  reward.py (CIDEr-D; bleu_reward.py mixes in BLEU-4 on request) and weighs samples
                  with scst_advantage.py
  run_eval.py     validation and test during training (decoding in evaluate.py)
  run_folder.py   metrics.jsonl, summary.json, results/, checkpoints (checkpoints.py)

Tools beside the pipeline: evaluate.py (`eval`, `caption`, `export` of a checkpoint; export.py writes
the Hugging Face folder), datacheck.py (`data check`), synth.py (`data synth`), plan.py and
plan_memory.py (`plan`), report.py (`report`), lavis.py (`import-lavis`), watchdog.py (orphaned
ranks), output.py (--json printing), noise.py (library chatter off stdout), cli.py (the command
line, importing each handler lazily).
docs/architecture.md says more.
"""
__version__ = "0.1.0"
