"""Tokenizers: a BERT-style WordPiece trained on the train texts (tiny model) or a pretrained one."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
from tokenizers.models import WordPiece
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from msa_dist.common.errors import MsaDistError
from msa_dist.common.limits import MAX_TEXT_BYTES
from msa_dist.models.pretrained import resolve_text_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# The encoders take only these; BERT's token_type_ids would be all zeros for single texts.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a lowercase BERT-style WordPiece tokenizer that adds [CLS] ... [SEP]."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise MsaDistError(f"tokenizer vocab_size must be larger than {len(SPECIAL_TOKENS)}; got {vocab_size}")
    backend = Tokenizer(WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    # a text member of any size costs at most MAX_TEXT_BYTES characters here (common/limits.py)
    backend.train_from_iterator((text[:MAX_TEXT_BYTES] for text in texts), trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,  # the tiny BERT's max_position_embeddings
        model_input_names=MODEL_INPUT_NAMES,
    )


def offline_hint(what: str, name: str) -> str:
    """The one-line message for a hub name that cannot be fetched here."""
    return (
        f"could not load {what} '{name}' (no network access or not in the Hugging Face cache). "
        f"Download it where there is internet (`huggingface-cli download {name} --local-dir DIR`, "
        f"or `AutoModel.from_pretrained(...).save_pretrained(DIR)`), copy DIR here and set model.text.name=DIR"
    )


def load_pretrained_tokenizer(name_or_dir: str) -> PreTrainedTokenizerFast:
    """AutoTokenizer.from_pretrained, with a plain `MsaDistError` when it is not available offline."""
    name_or_dir = name_or_dir.removeprefix("clip:")  # model.text.name of a CLIP text tower
    name_or_dir = resolve_text_dir(name_or_dir)  # a packaged backbone's short name -> its verified folder
    try:
        # never the folder's own code (an auto_map would otherwise prompt, and "y" runs it)
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        if Path(name_or_dir).is_dir():
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MsaDistError(
                f"could not load a tokenizer from directory '{name_or_dir}' (model.text.name): {first_line}"
            ) from None
        raise MsaDistError(offline_hint("tokenizer", name_or_dir)) from None
    tokenizer.model_input_names = MODEL_INPUT_NAMES
    return tokenizer
