"""VideoCaptioner: frames -> ViT -> frame fusion -> Q-Former -> projection -> LLM.

Every layer is transformers' own: the captioner holds a whole Blip2ForConditionalGeneration /
InstructBlipForConditionalGeneration as `self.hf` (so export is a save_pretrained) and adds only
what video needs: the ViT per frame, frame fusion before or after the Q-Former, an optional frame-index
embedding, motion tokens (motion.py) and conv tokens (conv_tokens.py). The prompt is constant per model,
so it is built here, not in every batch: encode_text returns the caption part only and the prefix is
prepended inside.

Token layout seen by the LLM (V = visual tokens, P = prompt ids):
  decoder-only (OPT, Llama):  [V; bos; P] -> caption ids ending with the stop token
  encoder-decoder (T5):       encoder [V; P + </s>], decoder -> caption ids + </s>
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .align import contrastive_loss, text_token_vectors
from .engine import gather_rows, world_size
from .words import WordHead, word_loss, word_targets

FUSIONS = ("concat", "per_frame")
MAX_FRAMES = 64  # rows of a frame-index embedding built here (the planner counts them too)


class VideoCaptioner(nn.Module):
    def __init__(self, hf_model, tokenizer, family: str, *, fusion: str = "concat", prompt: str = "",
                 frame_embedding: torch.Tensor | None = None, max_txt_len: int = 50,
                 qformer_tokenizer=None, qformer_text: bool = False, train_bos: bool = False,
                 image_size: int | None = None, image_mean: tuple = (), image_std: tuple = (),
                 frames: int | None = None, word_head_pool: str | None = None, motion_tokens: nn.Module | None = None,
                 conv_tokens: nn.Module | None = None):
        """image_size/mean/std: how the data pipeline must resize and normalise frames for this ViT
        (export writes them back); frames: the frame count it was trained with, when known;
        word_head_pool: add the training-only word head (words.py) with this pooling."""
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.hf, self.tokenizer, self.family, self.fusion = hf_model, tokenizer, family, fusion
        self.prompt = prompt or ""
        self.max_txt_len = max_txt_len
        self.qformer_tokenizer = qformer_tokenizer
        self.qformer_text = qformer_text
        self.num_query_tokens = hf_model.config.num_query_tokens
        self.is_encoder_decoder = not hf_model.config.use_decoder_only_language_model
        # LAVIS's Blip2OPT (empty prompt) also trains the last visual position to predict bos.
        self.train_bos = train_bos and not self.is_encoder_decoder and not self.prompt
        self.frame_embedding = None if frame_embedding is None else nn.Parameter(frame_embedding)
        self.motion_tokens, self.conv_tokens = motion_tokens, conv_tokens  # motion.py's, conv_tokens.py's, or None
        self.pad_id = tokenizer.pad_token_id
        self.stop_ids = self._stop_ids()
        self.image_size = image_size or hf_model.config.vision_config.image_size
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.frames = frames
        self.text_table = None  # the contrastive term's "cooccur" token vectors (cooccur.py): set per run, not saved
        self.word_head = None
        if word_head_pool is not None:  # one dtype for all parameters (ZeRO flattens them into one buffer)
            proj = hf_model.language_projection
            vocab = hf_model.get_input_embeddings().num_embeddings
            self.word_head = WordHead(proj.out_features, vocab, word_head_pool).to(proj.weight.dtype)

    # ----- text --------------------------------------------------------------------------------
    def _stop_ids(self) -> list[int]:
        if self.family == "opt":
            # BLIP-2 OPT captions end with "\n" (LAVIS); the last piece is "\n" whatever the tokenizer.
            return [self.tokenizer("\n", add_special_tokens=False).input_ids[-1]]
        return [self.tokenizer.eos_token_id]

    def caption_ids(self, captions: list[str]) -> list[list[int]]:
        """Each caption's token ids as training sees them (cut to max_txt_len - 1), before the stop token."""
        # one batched call: the fast tokenizer's per-call overhead is most of its cost on short captions
        encoded = self.tokenizer(list(captions), add_special_tokens=False).input_ids if captions else []
        return [ids[: self.max_txt_len - 1] for ids in encoded]

    def encode_text(self, captions: list[str]) -> dict:
        """Caption targets: ids end with the stop token, padding is pad id and -100 in labels."""
        rows = [ids + [self.stop_ids[0]] for ids in self.caption_ids(captions)]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], dtype=torch.long)
        attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def encode_references(self, references: list[list[str]]) -> dict:
        """Every reference caption of each video, one row each, and `owner`: the video of each row."""
        rows = [c for refs in references for c in refs]
        owner = torch.tensor([i for i, refs in enumerate(references) for _ in refs], dtype=torch.long)
        encoded = self.encode_text(rows)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "owner": owner}

    def decode(self, sequences: torch.Tensor) -> list[str]:
        texts = []
        for row in sequences.tolist():
            cut = next((i for i, t in enumerate(row) if t in self.stop_ids), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    def caption_mask(self, sequences: torch.Tensor) -> torch.Tensor:
        """1.0 for caption tokens up to and including the first stop token, 0.0 after it."""
        is_stop = torch.isin(sequences, torch.tensor(self.stop_ids, device=sequences.device)).long()
        after_stop = (is_stop.cumsum(1) - is_stop) > 0
        return (~after_stop).float()

    def _prompt_ids(self) -> list[int]:
        if self.is_encoder_decoder:  # T5 takes "<prompt></s>" into the encoder
            return self.tokenizer(self.prompt).input_ids
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        prompt = self.tokenizer(self.prompt, add_special_tokens=False).input_ids if self.prompt else []
        return bos + prompt

    # ----- vision ------------------------------------------------------------------------------
    @property
    def language_model(self):
        """The LLM to call: PEFT's wrapper is a container only, its LoRA layers live in the base."""
        lm = self.hf.language_model
        return lm.get_base_model() if hasattr(lm, "get_base_model") else lm

    def _qformer_text(self, rows: int, device) -> dict:
        if not self.qformer_text:
            # InstructBLIP's Q-Former requires the argument even without text; BLIP-2's has none.
            return {"input_ids": None} if hasattr(self.hf.qformer, "embeddings") else {}
        tok = self.qformer_tokenizer(self.prompt, return_tensors="pt")
        ids = tok.input_ids.to(device).expand(rows, -1)
        return {"input_ids": ids, "attention_mask": tok.attention_mask.to(device).expand(rows, -1)}

    def encode_visual(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> LLM input embeddings (B, tokens, hidden); tokens = Q or T*Q."""
        hf = self.hf
        batch, frames = pixel_values.shape[:2]
        # Frames of another size than the ViT's (364 px on a 224 px checkpoint) get its positions interpolated.
        native = hf.config.vision_config.image_size
        dtype = hf.vision_model.embeddings.patch_embedding.weight.dtype
        vit = hf.vision_model(pixel_values=pixel_values.flatten(0, 1).to(dtype), return_dict=True,
                              interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != (native, native))
        tokens = vit.last_hidden_state.unflatten(0, (batch, frames))  # (B, T, N, D)
        # More keys per frame: what changed to the next frame (motion.py), a small CNN's view (conv_tokens.py)
        for extra in (module for module in (self.motion_tokens, self.conv_tokens) if module is not None):
            tokens = torch.cat([tokens, extra(pixel_values).to(tokens.dtype)], 2)
        if self.frame_embedding is not None:
            if frames > getattr(self.frame_embedding, "ds_shape", self.frame_embedding.shape)[0]:
                raise ValueError(f"{frames} frames but the frame embedding has {self.frame_embedding.shape[0]}")
            tokens = tokens + self.frame_embedding[:frames, None, :].to(tokens.dtype)
        if self.fusion == "concat":  # one Q-Former pass over all frames' tokens: Q tokens whatever T
            tokens = tokens.flatten(1, 2)
        else:  # one Q-Former pass per frame: T*Q tokens
            tokens = tokens.flatten(0, 1)
        rows = tokens.shape[0]
        query = hf.query_tokens.expand(rows, -1, -1)
        mask = torch.ones(tokens.shape[:-1], dtype=torch.long, device=tokens.device)
        extra = self._qformer_text(rows, tokens.device)
        if extra.get("input_ids") is not None:
            extra["attention_mask"] = torch.cat(
                [torch.ones(query.shape[:-1], dtype=torch.long, device=tokens.device), extra["attention_mask"]], 1)
        out = hf.qformer(query_embeds=query, encoder_hidden_states=tokens, encoder_attention_mask=mask,
                         return_dict=True, **extra).last_hidden_state[:, : query.shape[1]]
        projected = hf.language_projection(out.to(hf.language_projection.weight.dtype))
        return projected.reshape(batch, -1, projected.shape[-1])

    def _prefix(self, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[visual; prompt] embeddings and mask: the decoder-only prefix or the T5 encoder input."""
        embed = self.language_model.get_input_embeddings()
        ids = torch.tensor(self._prompt_ids(), dtype=torch.long, device=visual.device)
        prompt = embed(ids).unsqueeze(0).expand(visual.shape[0], -1, -1)
        embeds = torch.cat([visual.to(prompt.dtype), prompt], 1)
        return embeds, torch.ones(embeds.shape[:-1], dtype=torch.long, device=visual.device)

    # ----- training and scoring ---------------------------------------------------------------
    def _caption_logits(self, visual, caption_ids, caption_mask, bos_too: bool = False) -> torch.Tensor:
        """Logits (B, L, vocab) predicting each caption token, teacher-forced; bos_too (decoder-only)
        prepends the last visual position's logits, which predict bos."""
        embeds, mask = self._prefix(visual)
        lm = self.language_model
        if self.is_encoder_decoder:
            start = torch.full_like(caption_ids[:, :1], lm.config.decoder_start_token_id)
            decoder_ids = torch.cat([start, caption_ids[:, :-1]], 1)
            out = lm(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids,
                     decoder_attention_mask=torch.cat([torch.ones_like(start), caption_mask[:, :-1]], 1))
            return out.logits
        caption_embeds = lm.get_input_embeddings()(caption_ids)
        out = lm(inputs_embeds=torch.cat([embeds, caption_embeds], 1),
                 attention_mask=torch.cat([mask, caption_mask.to(mask.dtype)], 1))
        # The prefix's last position predicts the first caption token.
        return out.logits[:, embeds.shape[1] - 1 - int(bos_too): -1]

    def forward(self, pixel_values, input_ids=None, attention_mask=None, labels=None, sequences=None,
                generate_kwargs: dict | None = None, **terms):
        """Mean cross-entropy over caption tokens (labels -100 ignored): a scalar; plus the CE phase's
        auxiliary terms that **terms turn on (forward_from_visual's keywords): itc_weight x the video-text
        contrastive loss (align.py; with itc_across_ranks every rank must call it) and words_weight x the
        word-head loss (words.py).

        The same call serves the other uses, so that under ZeRO-3 they can run through the
        engine (`engine(pixels, sequences=s)`): only inside the engine's forward does DeepSpeed
        gather parameters that modules own directly (query tokens, frame embedding).
          sequences=...        -> sequence_logprobs(pixel_values, sequences): (logprobs, mask)
          sequences=... and input_ids, attention_mask, labels -> (logprobs, mask, caption loss): one encoding
          generate_kwargs={..} -> generate(pixel_values, **generate_kwargs) (per-layer synced_gpus path)
        """
        if generate_kwargs is not None:
            return self.generate(pixel_values, **generate_kwargs)
        visual = self.encode_visual(pixel_values)
        if sequences is not None:
            logprobs, mask = self._logprobs_of(visual, sequences)
            if input_ids is None:
                return logprobs, mask
            return logprobs, mask, self.forward_from_visual(visual, input_ids, attention_mask, labels)
        return self.forward_from_visual(visual, input_ids, attention_mask, labels, **terms)

    def forward_from_visual(self, visual, input_ids, attention_mask, labels, itc_weight: float = 0.0,
                            itc_temperature: float = 0.1, itc_across_ranks: bool = False, itc_text_pool: str = "mean",
                            itc_swap_negatives: bool = False, itc_references: dict | None = None,
                            itc_text_side: str = "embedding", words_weight: float = 0.0,
                            word_references: dict | None = None):
        """forward's CE loss from the visual tokens encode_visual gave. The contrastive term (align.py): itc_text_pool
        "idf" pools the caption by its tokens' batch IDF, itc_swap_negatives adds each caption with one word
        swapped as a negative, itc_references (encode_references' form) makes the text side the mean over a
        video's references, itc_text_side picks the token vectors (align.text_token_vectors). words_weight:
        the word head (words.py) against word_references (encode_references' form)."""
        input_ids = input_ids.to(visual.device)
        logits = self._caption_logits(visual, input_ids, attention_mask.to(visual.device), bos_too=self.train_bos)
        labels = labels.to(visual.device)
        caption_mask = labels != -100
        if self.train_bos:
            labels = torch.cat([torch.full_like(labels[:, :1], self.tokenizer.bos_token_id), labels], 1)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        # The parts, detached, for the CE phase's log (ce_step): the returned loss is their weighted sum.
        self.last_loss_parts = {"caption_loss": loss.detach()}
        # the CE phase's auxiliary term (align.py), off by default; gathered, every rank joins the collective
        gather = gather_rows if itc_across_ranks and world_size() > 1 else None
        if itc_weight and (gather is not None or visual.shape[0] > 1):
            if self.text_table is not None and self.text_table.device != visual.device:  # moved once, not per step
                self.text_table = self.text_table.to(visual.device)
            embed = text_token_vectors(itc_text_side, self.language_model.get_input_embeddings(), self.text_table)
            refs = None if itc_references is None else {k: v.to(visual.device) for k, v in itc_references.items()}
            itc = contrastive_loss(visual, embed(input_ids), caption_mask, itc_temperature, gather,
                                   idf=itc_text_pool == "idf", token_ids=input_ids, swap_negatives=itc_swap_negatives,
                                   references=refs, embed=embed)
            self.last_loss_parts["itc_loss"] = itc.detach()
            loss = loss + itc_weight * itc
        if words_weight:
            if self.word_head is None or word_references is None:
                raise ValueError("words_weight > 0 needs a captioner built with a word head and word_references")
            refs = {k: v.to(visual.device) for k, v in word_references.items()}
            targets = word_targets(refs["input_ids"], refs["attention_mask"], refs["owner"], visual.shape[0],
                                   self.word_head.out_features)
            words = word_loss(self.word_head(visual), targets)
            self.last_loss_parts["words_loss"] = words.detach()
            loss = loss + words_weight * words
        return loss

    def sequence_logprobs(self, pixel_values, sequences) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs (with grad) of B*K sampled captions, and their caption mask.

        Row b*K + k belongs to video b (the order generate(num_return_sequences=K) returns), so the
        visual features are computed once per video and repeated K times. Positions after the
        first stop token are 0 in both outputs.
        """
        return self._logprobs_of(self.encode_visual(pixel_values), sequences)

    def _logprobs_of(self, visual, sequences) -> tuple[torch.Tensor, torch.Tensor]:
        repeats = sequences.shape[0] // visual.shape[0]
        visual = visual.repeat_interleave(repeats, 0)
        sequences = sequences.to(visual.device)
        mask = self.caption_mask(sequences)
        logits = self._caption_logits(visual, sequences, torch.ones_like(sequences))
        logprobs = logits.float().log_softmax(-1).gather(-1, sequences.unsqueeze(-1)).squeeze(-1)
        return logprobs * mask, mask

    # ----- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, pixel_values, *, num_beams: int = 1, do_sample: bool = False,
                 num_return_sequences: int = 1, max_new_tokens: int = 32, min_new_tokens: int = 0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, length_penalty: float = 1.0,
                 repetition_penalty: float = 1.0, synced_gpus: bool = False, return_logprobs: bool = False):
        """Caption token ids only (B*K, L), padded with pad id after the stop token.

        return_logprobs=True also returns generate()'s own per-token log-probs of the chosen tokens
        (after its logits processors, e.g. temperature), as (sequences, logprobs).
        """
        embeds, mask = self._prefix(self.encode_visual(pixel_values))
        kwargs = dict(num_beams=num_beams, do_sample=do_sample, num_return_sequences=num_return_sequences,
                      max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, eos_token_id=self.stop_ids,
                      pad_token_id=self.pad_id, synced_gpus=synced_gpus, return_dict_in_generate=True,
                      output_scores=return_logprobs)
        if num_beams > 1:
            kwargs["length_penalty"] = length_penalty
        if repetition_penalty != 1.0:  # passed only when used: transformers warns about it with inputs_embeds
            kwargs["repetition_penalty"] = repetition_penalty
        if do_sample:  # top_k=0 switches transformers' top-k warper off (its default is 50)
            kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
        out = (lm := self.language_model).generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        # Decoder-only generate from inputs_embeds returns new tokens only; T5 starts with its start id.
        sequences = out.sequences[:, 1:] if self.is_encoder_decoder else out.sequences
        if not return_logprobs:
            return sequences
        scores = lm.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                              normalize_logits=num_beams == 1)
        return sequences, scores[:, -sequences.shape[1]:] * self.caption_mask(sequences)
