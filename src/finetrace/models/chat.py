"""One way to render a chat, for training, steering and the behaviour prompts alike: the
tokenizer's own template, or finetrace's plain one when it has none."""

from transformers import PreTrainedTokenizerBase

from finetrace.models.load import prepended_ids

# Used when the tokenizer brings no template of its own. Newlines are written as expressions
# because chat templates render with trim_blocks. It writes no BOS: GPT-2 declares one it never
# adds, so the tokenizer's own prefix goes first instead.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat as text, ready for the assistant's turn with `add_generation_prompt`."""
    return tokenizer.apply_chat_template(
        messages,
        chat_template=tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


def chat_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """The chat's token ids: a tokenizer's own template writes its BOS itself where it wants one;
    the plain template gets what the tokenizer prepends to every text."""
    prefix = [] if tokenizer.chat_template else prepended_ids(tokenizer)
    text = chat_text(tokenizer, messages, add_generation_prompt)
    return prefix + tokenizer(text, add_special_tokens=False)["input_ids"]
