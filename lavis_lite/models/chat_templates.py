"""Chat templates per LLM family: one small declarative description each.

A template says how a conversation is laid out as text; ``conversation_encoder.py`` turns that
into ids and labels (assistant replies + end-of-turn supervised), and the same description gives
the generation prompt, so training, evaluation, chat and prediction build prompts in one place.

Fields (``{content}`` / ``{system}`` are filled in; every other character is template text):

* ``prefix``     -- once at the start (``<|begin_of_text|>``, ``<s>``).
* ``system``     -- the system block, rendered when the system message is not empty.
* ``system_in_first_user`` -- Llama-2 puts ``<<SYS>>`` inside the first ``[INST]`` instead.
* ``user``       -- one user turn.
* ``assistant``  -- one assistant turn: the text before ``{content}`` is its (unsupervised) header,
  after it comes ``eot`` (supervised with the reply) and then unsupervised text.
* ``generation`` -- what ends a prompt for generation (default: the assistant header).
* ``last_reply_header`` -- extra header text of the final reply and of the generation prompt
  (Qwen3's empty ``<think></think>`` block when thinking is off).
* ``image``      -- how one image's placeholder run is wrapped (MiniGPT-4: ``<Img>{image}</Img>``).
* ``control``    -- strings of the template that are single control tokens (emitted as ids; the
  same strings typed by a user stay text).
* ``strip``      -- strip whitespace around message contents (as the family's own template does).
* ``space_joins_next`` -- the spaces that end the system block or a user turn belong to the text that
  follows (Vicuna v1.1: ``... USER: hi ASSISTANT: ...`` has no control token between the pieces, and
  tokenising the whole string attaches each separator space to the next word, `` ASSISTANT``), so the
  pieces are tokenised with the space moved forward and give the whole string's ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

CONTENT = "{content}"


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    user: str
    assistant: str
    eot: str
    prefix: str = ""
    system: str = ""
    system_in_first_user: str = ""
    default_system: str = ""
    generation: str | None = None
    last_reply_header: str = ""
    image: str = "{image}"
    control: tuple[str, ...] = ()
    strip: bool = False
    space_joins_next: bool = False
    stop: tuple[str, ...] = field(default=())  # extra stop tokens for generation (besides eot)

    def __post_init__(self):
        for name in ("user", "assistant"):
            if getattr(self, name).count(CONTENT) != 1:
                raise ValueError(f"template {self.name!r}: {name} must hold {CONTENT} exactly once")
        if self.eot not in self.assistant.split(CONTENT, 1)[1]:
            raise ValueError(f"template {self.name!r}: eot {self.eot!r} must follow {CONTENT} in assistant")
        if "{image}" not in self.image:
            raise ValueError(f"template {self.name!r}: image must hold {{image}}")

    @property
    def assistant_header(self) -> str:
        return self.assistant.split(CONTENT, 1)[0]

    @property
    def generation_prompt(self) -> str:
        return (self.assistant_header if self.generation is None else self.generation) + self.last_reply_header

    def reply_tail(self) -> tuple[str, str]:
        """(supervised text after a reply, up to and including eot; unsupervised rest)."""
        after = self.assistant.split(CONTENT, 1)[1]
        cut = after.index(self.eot) + len(self.eot)
        return after[:cut], after[cut:]


_CHATML = dict(user="<|im_start|>user\n{content}<|im_end|>\n", assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
               eot="<|im_end|>", system="<|im_start|>system\n{system}<|im_end|>\n",
               control=("<|im_start|>", "<|im_end|>"))

TEMPLATES: dict[str, ChatTemplate] = {}


def register_template(template: ChatTemplate) -> ChatTemplate:
    """Add a template (plugins may call this); a name is registered once."""
    if template.name in TEMPLATES and TEMPLATES[template.name] != template:
        raise KeyError(f"chat template {template.name!r} is already registered")
    TEMPLATES[template.name] = template
    return template


# Qwen-1 (Qwen-7B/14B-Chat, remote code) and Qwen2 / Qwen2.5 / Qwen3 share ChatML; they differ in the
# default system message and in Qwen3's thinking block.
register_template(ChatTemplate(name="qwen", default_system="You are a helpful assistant.", **_CHATML))
register_template(ChatTemplate(name="qwen2", default_system="You are a helpful assistant.", **_CHATML))
register_template(ChatTemplate(name="qwen2.5", default_system="You are Qwen, created by Alibaba Cloud. "
                               "You are a helpful assistant.", **_CHATML))
register_template(ChatTemplate(name="qwen3", default_system="", last_reply_header="<think>\n\n</think>\n\n",
                               **_CHATML))
register_template(ChatTemplate(
    name="llama2", prefix="", user="<s>[INST] {content} [/INST]", assistant=" {content} </s>", eot="</s>", generation="",
    system_in_first_user="<<SYS>>\n{system}\n<</SYS>>\n\n", control=("<s>", "</s>"), strip=True))
register_template(ChatTemplate(
    name="llama3", prefix="<|begin_of_text|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
    user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
    assistant="<|start_header_id|>assistant<|end_header_id|>\n\n{content}<|eot_id|>", eot="<|eot_id|>",
    control=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), strip=True))
# FastChat's vicuna_v1.1 (Vicuna-7B v1.1 / v1.5, LLaVA-1.5): the string of fastchat.conversation's
# ``get_conv_template("vicuna_v1.1").get_prompt()`` after <s>, tokenised as the whole string (FastChat's
# training does); images wrapped as MiniGPT-4 does (tests/test_vicuna_template.py).
register_template(ChatTemplate(
    name="vicuna_v1.1", prefix="<s>", system="{system} ", user="USER: {content} ",
    assistant="ASSISTANT: {content}</s>", eot="</s>", generation="ASSISTANT:",
    default_system="A chat between a curious user and an artificial intelligence assistant. The assistant "
                   "gives helpful, detailed, and polite answers to the user's questions.",
    image="<Img>{image}</Img>", control=("<s>", "</s>"), space_joins_next=True))
# MiniGPT-4 (minigpt4/models/minigpt_base.py): every question is <s> + prompt_template.format(q), the
# prompt ends with the assistant header, and the answer + end_sym is tokenised on its own; text between
# images is tokenised per segment. Vicuna v0: prompt_template '###Human: {} ###Assistant: ', end_sym '###'.
register_template(ChatTemplate(
    name="minigpt4_vicuna0", user="<s>###Human: {content} ###Assistant: ", assistant="{content}###",
    eot="###", generation="", image="<Img>{image}</Img>", control=("<s>",)))
# MiniGPT-4 on Llama-2-chat: prompt_template '[INST] {} [/INST] ', end_sym '</s>'.
register_template(ChatTemplate(
    name="minigpt4_llama2", user="<s>[INST] {content} [/INST] ", assistant="{content}</s>", eot="</s>",
    generation="", image="<Img>{image}</Img>", control=("<s>", "</s>")))
# Plain prompt for models without a chat format (OPT, Flan-T5 style): the prompt, then the reply.
register_template(ChatTemplate(name="plain", user="{content}", assistant=" {content}</s>", eot="</s>",
                               generation="", control=("</s>",)))


def get_template(name_or_template, **overrides) -> ChatTemplate:
    """A registered template by name (or a ChatTemplate / dict of fields), with field overrides."""
    if isinstance(name_or_template, ChatTemplate):
        template = name_or_template
    elif isinstance(name_or_template, dict):
        template = ChatTemplate(**name_or_template)
    else:
        if name_or_template not in TEMPLATES:
            raise KeyError(f"unknown chat template {name_or_template!r}; registered: {sorted(TEMPLATES)}")
        template = TEMPLATES[name_or_template]
    return replace(template, **overrides) if overrides else template
