"""A sentencepiece tokenizer trained on captions, for the tiny decoders (no hub download).

Piece ids follow T5's convention (pad 0, eos 1, unk 2) plus bos 3, so one file serves the
T5, OPT and Llama tiny families. The folder holds `spiece.model` (what T5TokenizerFast reads) and a
copy named `tokenizer.model` (what LlamaTokenizerFast reads).
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path


def train_caption_tokenizer(texts: list[str], out_dir: str | Path, vocab_size: int = 256) -> Path:
    import sentencepiece as spm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    # hard_vocab_limit=False: a tiny corpus may hold fewer distinct pieces than vocab_size.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=3,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", bos_piece="<s>",
        user_defined_symbols=["\n"], remove_extra_whitespaces=True, minloglevel=2,
    )
    (out / "spiece.model").write_bytes(model.getvalue())
    shutil.copyfile(out / "spiece.model", out / "tokenizer.model")
    return out
