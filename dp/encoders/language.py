"""Language encoders: instruction strings -> one condition token per instruction, [B, D].

    enc = make_language_encoder({"encoder": "builtin"}, instructions, dim=192)
    tokens = enc(["push the puck to the goal", ...])          # [B, D]

Two kinds, chosen by ``language.encoder`` in the policy config:

- ``builtin``: a word-level vocabulary made from the dataset's instructions (lower-cased,
  split on anything that is not a letter or digit), word embeddings with learned
  positions, a small Transformer encoder, mean-pooled over the words. Trained from
  scratch with the policy; the vocabulary is rebuilt from the instruction list stored in
  the policy config, so a checkpoint needs nothing else. Unknown words map to ``<unk>``.
  At inference its encodings are cached per instruction string until the weights change.
- ``pretrained``: a Hugging Face text model loaded from a local directory
  (``language.path``; e.g. CLIP's text tower saved with ``save_pretrained``), frozen,
  followed by a trained linear projection to the policy width. Nothing is downloaded:
  a missing directory is an error that says what to put there. The frozen model's
  weights stay in that directory, not in the policy checkpoint; its encodings are cached
  per instruction string.

Both also give one token per word / sub-word, for cross-attention:
``enc.tokens(texts) -> (x [B, L, W], mask [B, L])`` (see ``dp.encoders.tokens.WordTokens``).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from dp.core.weights import weights_key
from dp.errors import ConfigError

ENCODERS = ("builtin", "pretrained")
PAD, UNK = 0, 1


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def pad_tokens(seqs: list[torch.Tensor], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences [L_i, W] -> (x [B, max L_i, W] zero-padded at the tail, mask [B, L] bool, True = real)."""
    x = nn.utils.rnn.pad_sequence(seqs, batch_first=True).to(device)
    lengths = torch.tensor([len(t) for t in seqs], device=x.device)
    return x, torch.arange(x.shape[1], device=x.device) < lengths[:, None]


class WordTokenizer:
    """Word-level ids from a fixed instruction list: texts -> ([B, L] ids, [B, L] bool valid)."""

    def __init__(self, instructions: list[str]):
        vocab = sorted({w for text in instructions for w in words(text)})
        self.index = {w: i + 2 for i, w in enumerate(vocab)}  # 0 pad, 1 unknown
        self.max_len = max([len(words(t)) for t in instructions] + [1])

    def __len__(self) -> int:
        return len(self.index) + 2

    def __call__(self, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[self.index.get(w, UNK) for w in words(t)][: self.max_len] or [UNK] for t in texts]
        length = max(len(i) for i in ids)
        out = torch.full((len(ids), length), PAD, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq)
        out = out.to(device)
        return out, out != PAD


class BuiltinTextEncoder(nn.Module):
    """Instruction strings -> [B, D]: word embeddings + positions, ``layers`` Transformer
    encoder layers, mean over the words."""

    def __init__(self, instructions: list[str], dim: int, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokenizer = WordTokenizer(instructions)
        self.embed = nn.Embedding(len(self.tokenizer), dim, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, self.tokenizer.max_len, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim)
        self._cache: dict[str, torch.Tensor] = {}  # inference only: text -> [D]
        self._cache_key: tuple = ()

    def forward(self, texts: list[str]) -> torch.Tensor:
        """At inference (eval mode, no autograd) each string's encoding is kept until the
        weights change: an episode's instruction is the same at every prediction, and
        encoding it costs ~0.5 ms of a 17 ms MoDE prediction on a 2-core CPU."""
        if self.training or torch.is_grad_enabled():
            return self.encode(texts)
        key = weights_key(self.parameters())
        if key != self._cache_key:
            self._cache, self._cache_key = {}, key
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, self.encode(missing)))
        return torch.stack([self._cache[t] for t in texts])

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids, valid = self.tokenizer(texts, device=self.pos.device)
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=~valid)
        h = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
        return self.norm(h)

    @property
    def token_dim(self) -> int:
        return self.pos.shape[-1]

    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per word: texts -> (x [B, L, D], mask [B, L] bool, True = a word).

        L is the batch's longest instruction (at most the vocabulary's ``max_len``; an empty
        one is one ``<unk>``). Padding is masked out of attention and zeroed, so a word's state
        does not depend on the other instructions in the batch. Not cached."""
        ids, valid = self.tokenizer(texts, device=self.pos.device)
        h = self.embed(ids) + self.pos[:, : ids.shape[1]]
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=~valid)
        return self.norm(h) * valid[..., None], valid


class PretrainedTextEncoder(nn.Module):
    """A frozen local Hugging Face text model + a trained projection: texts -> [B, D]."""

    def __init__(self, path: str | None, dim: int):
        super().__init__()
        if not path:
            raise ConfigError("language.encoder 'pretrained' needs language.path: a local directory holding a "
                             "Hugging Face text model and its tokenizer (e.g. saved with save_pretrained).")
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"language.path {str(self.path)!r} is not a directory. dp downloads nothing at run time: save a "
                "text model and its tokenizer there first, e.g. on a machine with internet access:\n"
                "  from transformers import CLIPTextModel, CLIPTokenizer\n"
                "  CLIPTextModel.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(DIR)\n"
                "  CLIPTokenizer.from_pretrained('openai/clip-vit-base-patch32').save_pretrained(DIR)\n"
                "or use language.encoder=builtin.")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is the [language] extra
            raise ImportError("language.encoder 'pretrained' needs the transformers package "
                              "(pip install 'dp[language]', or make setup).") from e
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            model = AutoModel.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"could not load a text model and tokenizer from {str(self.path)!r}: {e}") from e
        model.eval().requires_grad_(False)
        # kept outside the module tree: its weights live in `path`, not in dp's checkpoint
        self._frozen = (tokenizer, model)
        width = getattr(model.config, "projection_dim", None) if hasattr(model, "get_text_features") else None
        self.proj = nn.Linear(width or model.config.hidden_size, dim)
        self._cache: dict[str, torch.Tensor] = {}
        self._token_cache: dict[str, torch.Tensor] = {}  # text -> [L, token_dim]

    @torch.no_grad()
    def _features(self, text: str) -> torch.Tensor:
        feats = self._cache.get(text)
        if feats is None:
            tokenizer, model = self._frozen
            batch = tokenizer([text], return_tensors="pt", padding=True)
            if hasattr(model, "get_text_features"):  # CLIP: the projected text embedding
                feats = model.get_text_features(**batch)
                feats = getattr(feats, "pooler_output", feats)
            else:
                out = model(**batch)
                mask = batch["attention_mask"][..., None].to(out.last_hidden_state.dtype)
                feats = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
            feats = feats[0].float()
            self._cache[text] = feats
        return feats

    def forward(self, texts: list[str]) -> torch.Tensor:
        feats = torch.stack([self._features(t) for t in texts]).to(self.proj.weight.device)
        return self.proj(feats)

    @property
    def token_dim(self) -> int:
        """Width of ``tokens``: the text model's hidden size (not ``proj``'s input for CLIP)."""
        config = self._frozen[1].config
        return getattr(config, "text_config", config).hidden_size

    @torch.no_grad()
    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per sub-word, the frozen model's last hidden states, not projected:
        texts -> (x [B, L, token_dim], mask [B, L] bool, True = a real token).

        Texts not seen before are encoded in one padded batch; the tokenizer's attention
        mask drops their padding and each text's states are cached. The batch is then
        zero-padded at the tail to its longest text, so padding never leaks into a text's
        states."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if missing:
            tokenizer, model = self._frozen
            batch = tokenizer(missing, return_tensors="pt", padding=True)
            text_model = getattr(model, "text_model", model)  # a full CLIPModel: its text tower
            hidden = text_model(**batch).last_hidden_state.float()
            real = batch["attention_mask"].bool()
            self._token_cache.update((t, h[m]) for t, h, m in zip(missing, hidden, real))
        return pad_tokens([self._token_cache[t] for t in texts], device=self.proj.weight.device)


def make_language_encoder(cfg: dict, instructions: list[str], dim: int) -> nn.Module:
    """cfg: ``{"encoder": "builtin" | "pretrained", "path": DIR, "layers": 2}``."""
    kind = cfg.get("encoder", "builtin")
    if kind == "builtin":
        if not instructions:
            raise ConfigError("language.encoder 'builtin' builds its vocabulary from the dataset's instructions, "
                             "and this dataset records none (attrs 'instructions'). Collect it with dp-collect.")
        return BuiltinTextEncoder(instructions, dim, layers=int(cfg.get("layers", 2)))
    if kind == "pretrained":
        return PretrainedTextEncoder(cfg.get("path"), dim)
    raise ConfigError(f"language.encoder must be one of {ENCODERS}, got {kind!r}.")
