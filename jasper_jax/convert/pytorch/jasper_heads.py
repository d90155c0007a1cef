"""The Jasper student's named heads as a sentence-transformers module (shipped by `jasper-jax export`).

Every head is `Linear(hidden -> d, bias)` on the pooled vector; one is active. Choose another one with
`SentenceTransformer(DIR, trust_remote_code=True, config_kwargs={"jasper_head": "fc2"})`, per call with
`model.encode(texts, head="fc2")`, or by setting `model[2].active_head = "fc2"`. A following Normalize
module L2-normalises the result.
"""

import os

import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.base.modules.module import Module


class JasperHeads(Module):
    config_keys = ["in_features", "heads", "active_head"]
    forward_kwargs = {"head"}

    def __init__(self, in_features, heads, active_head=None):
        super().__init__()
        self.in_features = int(in_features)
        self.heads = {str(name): int(dim) for name, dim in heads.items()}
        self.active_head = active_head or next(iter(self.heads))
        if self.active_head not in self.heads:
            raise ValueError(f"unknown head {self.active_head!r}; this model has heads {sorted(self.heads)}")
        self.linears = torch.nn.ModuleDict(
            {name: torch.nn.Linear(self.in_features, dim) for name, dim in self.heads.items()}
        )

    def forward(self, features, head=None, **kwargs):
        name = head or self.active_head
        if name not in self.linears:
            raise ValueError(f"unknown head {name!r}; this model has heads {sorted(self.heads)}")
        features["sentence_embedding"] = self.linears[name](features["sentence_embedding"])
        return features

    def get_embedding_dimension(self):
        return self.heads[self.active_head]

    def get_sentence_embedding_dimension(self):
        return self.get_embedding_dimension()

    def save(self, output_path, *args, **kwargs):
        self.save_config(output_path)
        tensors = {key: value.detach().contiguous() for key, value in self.linears.state_dict().items()}
        save_file(tensors, os.path.join(output_path, "model.safetensors"))

    @classmethod
    def load(
        cls,
        model_name_or_path,
        subfolder="",
        token=None,
        cache_folder=None,
        revision=None,
        local_files_only=False,
        config_kwargs=None,
        **kwargs,
    ):
        hub = dict(token=token, cache_folder=cache_folder, revision=revision, local_files_only=local_files_only)
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub)
        if config_kwargs and config_kwargs.get("jasper_head"):
            config["active_head"] = config_kwargs["jasper_head"]
        module = cls(**config)
        path = cls.load_file_path(model_name_or_path, "model.safetensors", subfolder=subfolder, **hub)
        module.linears.load_state_dict(load_file(path))
        return module
