"""A Hugging Face model directory (config.json, safetensors, tokenizer files) as
a ModelSpec. What the hyper-parameters and tensor names mean is the model
family's business (pycompat/models/)."""

from __future__ import annotations

from pathlib import Path

from pycompat.loading.errors import ModelFileError
from pycompat.loading.safetensors import read_safetensors
from pycompat.loading.spec import KernelWeights, ModelSpec, WeightTensor
from pycompat.loading.tokenizer import Tokenizer, read_json
from pycompat.models.registry import family_for_hf


def safetensors_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, required=True).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelFileError(index, "has no weight_map")
        return [directory / f for f in sorted(set(weight_map.values()))]
    single = directory / "model.safetensors"
    if not single.exists():
        raise ModelFileError(directory, "no model.safetensors or model.safetensors.index.json")
    return [single]


def load_hf_dir(directory: Path) -> ModelSpec:
    config_path = directory / "config.json"
    hf = read_json(config_path, required=True)
    family = family_for_hf(hf.get("model_type"), config_path)
    config = family.config_from_hf(hf, config_path)

    tensors = []
    for file in safetensors_files(directory):
        for name, t in read_safetensors(file).items():
            kname = family.kernel_name_from_hf(name, hf)
            if kname is not None:
                tensors.append(WeightTensor(kname, t.dtype, t.shape, file, t.offset, t.data))

    tokenizer_config = read_json(directory / "tokenizer_config.json")
    generation_config = read_json(directory / "generation_config.json")
    tokenizer = Tokenizer.from_hf_dir(directory, tokenizer_config, generation_config)
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # a list of named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return ModelSpec(
        name=directory.name,
        weights=KernelWeights(config, tensors),
        tokenizer=tokenizer,
        chat_template=template,
        sampling_defaults={k: generation_config[k] for k in ("temperature", "top_p", "top_k", "min_p") if isinstance(generation_config.get(k), (int, float))},
    )
