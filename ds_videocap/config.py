"""Recipe configuration: nested dataclasses, every field documented under it.

The recipe owns the ML (model, data, lr, schedule, SCST); the DeepSpeed JSON owns the system
(ZeRO stage, offload, precision, micro-batch, accumulation). Every range and cross-field rule lives in
recipe_rules.validate, so that a user's mistake is reported once, naming the field, before any rank works.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

# The tiny from-scratch model's sizes (build_tiny_folder, plan); a recipe changes them in model.tiny_sizes.
TINY_SIZES = {"patch_size": 8, "vision_hidden": 96, "vision_layers": 2, "qformer_hidden": 96, "qformer_layers": 2,
              "num_query_tokens": 16, "llm_hidden": 96, "llm_layers": 2}
RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(UserError):
    """A recipe or override problem; the message names the source and the field."""


@dataclass
class DataCfg:
    videos: str | None = None
    """Videos root; relative video paths in annotation files resolve against it."""
    train: str | None = None
    """Training annotation file (format auto-detected unless `format` is set)."""
    sources: list | None = None
    """Several training sets drawn by ratio, instead of `train`: a list of {name, train, videos, ratio,
    format}; e.g. WebVid pseudo-captions and MSR-VTT at 1:7. Validation and test stay per dataset."""
    val: str | None = None
    """Validation annotation file; empty skips periodic validation."""
    test: str | None = None
    """Test annotation file, scored after each phase."""
    format: str = "auto"
    """auto | lavis | msrvtt | msvd | vatex | jsonl"""
    frames: int = 8
    """Frames sampled per clip (T)."""
    image_size: int = 224
    """Frames are resized to this square size at decode."""
    image_mean: list | None = None
    image_std: list | None = None
    """Per-channel mean and std frames are normalised with; None: the model folder's image processor's."""
    train_sampling: str = "random_segment"
    """random_segment | headtail | uniform: frame sampling for training."""
    eval_sampling: str = "uniform"
    """Frame sampling for validation, test and captioning."""
    augment: bool = True
    """Random-resized-crop (scale 0.5-1) + horizontal flip for training."""
    max_words: int = 50
    """Captions are lower-cased, stripped of punctuation and cut to this many words."""
    num_workers: int = 2
    """DataLoader worker processes per rank (decoding runs there)."""
    cache_mb: float = 0.0
    """Keep decoded clips in memory, up to this many MiB per worker (0: off); for small sets, many epochs."""
    backend: str = "decord"
    """decord | pyav: the video reader."""
    decode_timeout_s: float = 30.0
    """A video that takes longer than this to decode is skipped and reported."""
    max_skipped_fraction: float = 0.05
    """Stop with an error when more than this fraction of an epoch's videos are skipped."""


@dataclass
class ModelCfg:
    path: str | None = None
    """A local Hugging Face folder (Blip2ForConditionalGeneration / InstructBlipForConditionalGeneration)."""
    tiny: str | None = None
    """opt | t5 | llama: a tiny model built in code (used when `path` is empty)."""
    tokenizer: str | None = None
    """Tokenizer folder for tiny models (default: the synthetic set's tokenizer/)."""
    tiny_sizes: dict = field(default_factory=dict)
    """Sizes of the tiny model that differ from config.TINY_SIZES, e.g. {patch_size: 4, vision_hidden: 64}."""
    tiny_dropout: float = 0.0
    """Every dropout of the tiny model (ViT attention, Q-Former, LLM). transformers' configs say 0.1; a
    from-scratch model that sees each clip a dozen times learns faster without (benchmarks/README.md)."""
    fusion: str | None = None
    """concat: all frames in one Q-Former pass (the study); per_frame: one pass per frame (InstructBLIP-Video).
    None: the folder's (videocap.json), else per_frame for InstructBLIP-Video folders and concat otherwise."""
    frame_embedding: bool = False
    """Add a learned frame-index embedding to the ViT tokens (zero-init for pretrained models)."""
    motion_tokens: bool = False
    """Give the Q-Former one more token per patch and frame: a patch embedding of the frame's difference
    to the next (motion.py), so that which way each object moves is a local feature bound to its colour."""
    motion_patch: int | None = None
    """The motion tokens' patch size in pixels (None: the ViT's). Smaller patches give more, finer keys."""
    conv_tokens: bool = False
    """Give the Q-Former a small CNN's tokens of each frame too (conv_tokens.py): shapes a few pixels wide,
    which a patch-8 ViT sees in pieces. With a vision stage they train there first, beside the ViT."""
    llm: str = "frozen"  # frozen | lora | full
    vit: str = "frozen"  # frozen | full
    vit_lr_scale: float = 1.0
    """The ViT's learning rate as a share of the phase's (CE and SCST), e.g. 0.3 for a ViT trained before."""
    quant: str | None = None
    """None | 8bit | 4bit: load the LLM with bitsandbytes."""
    prompt: str | None = None
    """Text prompt; None takes the family default (T5: 'a video of', OPT: none)."""
    qformer_text: bool | None = None
    """InstructBLIP: feed the prompt to the Q-Former as instruction text. None: the folder's
    (videocap.json), else true for InstructBLIP-Video folders and false otherwise."""
    opt_train_bos: bool = False
    """OPT with an empty prompt: also train the last visual position to predict bos, as the study's
    LAVIS Blip2OPT does (its CE loss is then about 0.2% higher on equal weights)."""
    max_txt_len: int = 50  # maximum caption tokens in training
    image_size: int | None = None
    """Frame size fed to the ViT; None uses the checkpoint's preprocessor size; another size
    interpolates the position embeddings."""
    grad_checkpointing_llm: bool = False
    grad_checkpointing_vit: bool = False


@dataclass
class LoraCfg:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: list | None = None
    """None takes the family default (T5: q, v; OPT and Llama: q_proj, v_proj)."""


@dataclass
class CECfg:
    steps: int = 1000
    """Optimizer steps of cross-entropy training; 0 skips the phase."""
    epochs: int | None = None
    """When set, overrides `steps` with epochs x steps-per-epoch."""
    lr: float = 5e-5
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eval_every: int = 0  # validate every N steps (0: only at the end)
    log_every: int = 10
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept (the best by validation CIDEr is kept as well)."""
    micro_batch: int | None = None
    """Per-rank micro-batch; None takes train_micro_batch_size_per_gpu from the JSON."""
    itc_weight: float = 0.0  # this much video-text contrastive loss (align.py) added to the caption loss; 0: off
    itc_temperature: float = 0.1
    itc_across_ranks: bool = True  # every rank's videos and captions are the negatives (BLIP-2's ITC)
    itc_text_pool: str = "mean"  # the caption vector: the mean token embedding, or "idf"-weighted (align.py)
    itc_swap_negatives: bool = False  # each video's caption with one word swapped is a negative too (align.py)
    itc_all_references: bool = False  # text side: the mean over all of a video's references (align.py)
    itc_text_side: str = "embedding"  # token vectors: the LLM's embedding, "detached", "random", "cooccur" (cooccur.py)
    itc_text_rank: int = 16  # the "cooccur" table's dimensions (principal axes of the clip-by-token matrix)
    words_weight: float = 0.0  # this much word-head loss (words.py: the references' words from the video); 0: off
    words_pool: str = "mean"  # the word head reads the mean visual token, or each token's best ("max")


@dataclass
class SCSTCfg:
    steps: int = 0
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    micro_batch: int | None = None
    samples: int = 5
    """K multinomial samples per video."""
    baseline: str = "mean_others"
    """mean_others | greedy | beam_mean"""
    advantage: str = "raw"
    """raw (reward - baseline) | group_norm (also divided by each video's reward std, GRPO-style)"""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_new_tokens: int = 32
    length_norm: bool = False
    """Divide each sample's log-prob sum by its length."""
    reward_bleu4: float = 0.0
    """The reward is CIDEr-D plus this much of the caption's BLEU-4 (1: the study's CIDEr + Bleu_4 ranking)."""
    ce_weight: float = 0.0
    """Mix in this much cross-entropy loss, on the reference the loader drew for each clip (as CE trains)."""
    reset_optimizer: bool = False
    """Entering SCST after CE in the same run: true starts from fresh Adam moments (as a separate SCST
    run from a CE checkpoint does); false keeps CE's. Weight decay and betas are SCST's either way."""
    gather_for_generation: bool = True
    """ZeRO-3: gather parameters once per rollout (False: per-layer synced generation)."""
    eval_every: int = 0
    log_every: int = 10
    save_every: int = 0
    keep_last: int = 2


@dataclass
class EvalCfg:
    num_beams: int = 5
    max_new_tokens: int = 32
    min_new_tokens: int = 5
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    batch_size: int = 16
    val_num_beams: int = 1
    """Periodic validation decodes greedily (the study's final test uses beam 5)."""


@dataclass
class VisionCfg:
    """The vision stage (vision_stage.py): the model folder's ViT trained alone on captioned stills before
    the video stages, for a ViT that starts from scratch (the tiny models); a pretrained BLIP-2 folder's ViT
    has had its image-text training already."""
    steps: int = 0
    """Optimizer steps of the stage; 0 skips it."""
    train: str | None = None
    """Image-caption annotations (LAVIS form: records {"image", "caption"}, the captions of one image in
    records of their own or as a list); with synth_dir, the synthetic set's stills_train.json."""
    images: str | None = None
    """Images root; relative "image" paths resolve against it."""
    lr: float = 1.0e-3
    warmup_fraction: float = 0.1
    """One-cycle schedule: the lr rises over this share of the steps, then anneals (cosine) to ~0."""
    weight_decay: float = 0.05
    micro_batch: int = 64
    """Stills per rank and step (the gradients are averaged over ranks)."""
    num_workers: int | None = None
    """Loader processes per rank for the stills (None: data.num_workers); 0 reads them in the rank itself."""
    text_rank: int = 8
    """The target: each still's captions as a vector of this many co-occurrence axes (cooccur.py)."""
    balance: float = 2.0
    """Each axis's loss weighs (its loss now / its first loss) ** balance (GradNorm's rate balancing), so
    that the slow axes (shape) are not left behind by the fast ones (colour); 0: plain MSE."""
    log_every: int = 200


@dataclass
class RecipeCfg:
    name: str = "custom"
    output_dir: str | None = None
    """Default runs/<name>."""
    seed: int = 42
    resume: str | None = None
    """auto (last complete checkpoint in output_dir) or a checkpoint folder."""
    init_from: str | None = None
    """Start from this checkpoint's weights (e.g. SCST from a CE run)."""
    synth_dir: str | None = None
    """When set, `train` generates the synthetic set there (once); empty data paths point into it."""
    synth_videos: int | None = None
    """Clips in the generated synthetic set (None: the set's standard size)."""
    max_nonfinite_steps: int = 5
    """A NaN/inf loss or reward skips that update; this many in a row stop the run (naming the step
    and the batch's videos): by then the weights or the data are broken, not one unlucky batch."""
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    lora: LoraCfg = field(default_factory=LoraCfg)
    ce: CECfg = field(default_factory=CECfg)
    scst: SCSTCfg = field(default_factory=SCSTCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    vision: VisionCfg = field(default_factory=VisionCfg)


CHOICES = {
    "data.format": ("auto", "lavis", "msrvtt", "msvd", "vatex", "jsonl"),
    "data.train_sampling": ("random_segment", "headtail", "uniform"),
    "data.eval_sampling": ("random_segment", "headtail", "uniform"),
    "data.backend": ("decord", "pyav"),
    "model.tiny": (None, "opt", "t5", "llama"),
    "model.fusion": (None, "concat", "per_frame"),
    "model.llm": ("frozen", "lora", "full"),
    "model.vit": ("frozen", "full"),
    "model.quant": (None, "8bit", "4bit"),
    "scst.baseline": ("mean_others", "greedy", "beam_mean"),
    "scst.advantage": ("raw", "group_norm"),
    "ce.itc_text_pool": ("mean", "idf"),
    "ce.itc_text_side": ("embedding", "detached", "random", "cooccur"),
    "ce.words_pool": ("mean", "max"),
}


def as_dict(cfg: RecipeCfg) -> dict:
    return dataclasses.asdict(cfg)
