"""A local text model for language-encoder tests, made without any download."""
from __future__ import annotations


def tiny_local_text_model(path, texts) -> None:
    """A randomly initialised 2-layer BERT (hidden 24) and a word-level tokenizer over the words of
    ``texts``, saved to ``path``: the layout a user's local CLIP/BERT directory has."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *sorted({w for t in texts for w in t.split()})])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(path)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=48, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(path)
