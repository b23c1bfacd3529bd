"""Training a byte-level BPE tokenizer that loads through ``transformers.AutoTokenizer``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
EOS_TOKEN, PAD_TOKEN = "<|endoftext|>", "<|pad|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 8192,
                        chat_template: str = DEFAULT_CHAT_TEMPLATE) -> Any:
    """A byte-level BPE tokenizer (any text encodes, nothing is unknown) trained on ``texts``.

    Returns a ``transformers.PreTrainedTokenizerFast`` with EOS and padding tokens and
    a chat template; ``save_pretrained`` writes it beside a model.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN)
    fast.chat_template = chat_template
    return fast
