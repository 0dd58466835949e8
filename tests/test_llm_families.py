"""Every LLM family at tiny size: builds with transformers' own config class, trains (loss falls),
evaluates (loss / token accuracy), chats through the shared processor; LoRA targets from the family
table; MiniGPT-4 loads a checkpoint with its released key names."""
import pytest
import torch
from safetensors.torch import save_file

from lavis_lite.models import load_model
from lavis_lite.models.conversation_encoder import IGNORE_INDEX
from lavis_lite.models.minigpt4 import MiniGPT4
from lavis_lite.models.minigpt4qwen import Minigpt4Qwen

TYPES = [  # (class, model type, transformers LLM class, template)
    (Minigpt4Qwen, "tiny", "Qwen2ForCausalLM", "qwen2"),
    (Minigpt4Qwen, "tiny_qwen3", "Qwen3ForCausalLM", "qwen3"),
    (Minigpt4Qwen, "tiny_llama3", "LlamaForCausalLM", "llama3"),
    (MiniGPT4, "tiny", "LlamaForCausalLM", "minigpt4_vicuna0"),
    (MiniGPT4, "tiny_llama2", "LlamaForCausalLM", "minigpt4_llama2"),
]
IDS = [f"{cls.__name__}-{t}" for cls, t, _, _ in TYPES]


def samples(seed=0):
    g = torch.Generator().manual_seed(seed)
    convs = [[{"from": "human", "value": "<ImageHere> What colour is the shape?"}, {"from": "gpt", "value": "red"}],
             [{"from": "human", "value": "Describe <ImageHere> briefly."}, {"from": "gpt", "value": "a blue square"}],
             [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]]
    return {"image": torch.randn(2, 3, 32, 32, generator=g), "n_images": [1, 1, 0], "conversations": convs}


@pytest.mark.slow
@pytest.mark.parametrize("cls,model_type,llm_class,template", TYPES, ids=IDS)
def test_family_trains_evaluates_and_chats(cls, model_type, llm_class, template):
    torch.manual_seed(0)
    model = cls.from_pretrained(model_type)
    assert type(model.llm_model).__name__ == llm_class
    assert model.chat_processor.template.name == template
    batch = model.collate_conversations(samples())
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == model.count_supervised_tokens(batch) > 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    losses = []
    for _ in range(6):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] - 0.1 and losses == sorted(losses, reverse=True), losses
    model.eval()
    with torch.no_grad():
        ev = model(samples())  # raw conversations: the same processor and collator in-process
    assert 0 <= ev["n_correct"] <= ev["n_tokens"] == out["n_tokens"]
    answer, history = model.chat(torch.randn(3, 32, 32), "What is it?", max_new_tokens=4)
    assert isinstance(answer, str) and history[0]["value"].startswith("<ImageHere>")
    answers = model.generate({"image": torch.randn(2, 3, 32, 32), "prompt": ["Colour?", "Shape?"]}, max_new_tokens=3)
    assert len(answers) == 2


@pytest.mark.parametrize("cls,model_type", [(Minigpt4Qwen, "tiny_qwen3"), (Minigpt4Qwen, "tiny_llama3"),
                                            (MiniGPT4, "tiny")])
def test_lora_targets_come_from_the_family_table(cls, model_type):
    model = cls.from_pretrained(model_type, get_lora=True, lora_r=2, lora_include_mlp=True)
    wrapped = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_minigpt4_loads_its_released_key_names(tmp_path):
    """prerained_minigpt4_7b.pth holds {'model': {'llama_proj.weight', 'llama_proj.bias'}}."""
    model = MiniGPT4.from_pretrained("tiny")
    assert "llama_proj.weight" in model.state_dict() and not hasattr(model, "llm_proj")
    assert model.feature_stage_modules()["proj"][-1] == "llama_proj"
    state = {"llama_proj.weight": torch.randn_like(model.llama_proj.weight),
             "llama_proj.bias": torch.randn_like(model.llama_proj.bias)}
    torch.save({"model": state}, tmp_path / "prerained_minigpt4_tiny.pth")
    loaded = load_model("minigpt4", "tiny", checkpoint=str(tmp_path / "prerained_minigpt4_tiny.pth"))
    assert torch.equal(loaded.llama_proj.weight, state["llama_proj.weight"])
    save_file({"llm_proj.weight": state["llama_proj.weight"]}, str(tmp_path / "qwen_names.safetensors"))
    with pytest.raises(Exception, match="llm_proj.weight"):
        model.load_checkpoint(str(tmp_path / "qwen_names.safetensors"))


def test_minigpt4_prompt_is_minigpt4s():
    model = MiniGPT4.from_pretrained("tiny")
    batch = model.chat_processor.generation_batch([[{"from": "human", "value": "<ImageHere> Describe this image."}]], [1])
    text = model.llm_tokenizer.decode(batch.input_ids[0].tolist())
    q = model.num_query_token
    assert text == "<s>###Human: <Img>" + "<|image_pad|>" * q + "</Img> Describe this image. ###Assistant: "
    kwargs = model.generation_kwargs()
    assert kwargs["stop_strings"] == ["###"]  # MiniGPT-4's end symbol is text, not one token
