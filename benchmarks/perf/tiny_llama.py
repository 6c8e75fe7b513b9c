"""A tiny random Llama and a tiny trained tokenizer with a chat template: LLM plumbing without downloads.

``tiny_backbone_dir(path)`` saves both as a local model folder that ``methods.backbone.load_backbone``
loads like any other (``--llm <path>``): the tests' backbone, and ``gpu_check``'s stand-in where the
offline SmolLM2 cannot be carried to a device. Its metrics mean nothing.
"""
from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "Given the user's preference and unpreference, identify whether the user will like the target movie",
    "by answering \"Yes.\" or \"No.\". ### Instruction: ### Input: ### Response: User Preference: Unpreference:",
    "Whether the user will like the target movie? Yes. No. Toy Story, Star Wars, The Usual Suspects, Heat",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ,.:;'\"()!?&-",
]


def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocabulary ~400) trained on a few prompt-like lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 5, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A randomly initialized LlamaForCausalLM (float32, eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def tiny_backbone_dir(path: Path) -> Path:
    """Save a tiny tokenizer + random Llama under ``path`` (once) and return it."""
    if not (path / "config.json").exists():
        tokenizer = tiny_tokenizer()
        model = tiny_llama(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path
