"""Image embeddings on the PyTorch side for a Jasper export with a vision tower (shipped by `jasper-jax export`).

The image input is the token sequence in `vision/jasper_image.json` (`<|jasper_img_start|>`, n x
`<|jasper_img_token|>`, `<|jasper_img_end|>` with the tokenizer's own special tokens). The SigLIP tower
(`vision/`, transformers' SiglipVisionModel) encodes the image; `AdaptiveAvgPool2d((n, hidden))` turns its
(patches, vision_hidden) tokens into n rows that replace the embeddings at the image-token positions; the
markers' embeddings come from `vision/markers.safetensors`. The text model, pooling, heads and
normalisation are the folder's own sentence-transformers modules.

    import sys; sys.path.insert(0, DIR)
    from jasper_vision import JasperImageEncoder
    encoder = JasperImageEncoder(DIR)                    # loads SentenceTransformer(DIR, trust_remote_code=True)
    vectors = encoder.encode_images(["cat.png"], head="fc1")   # (N, d) float32 numpy, rows L2-normalised
    texts = encoder.model.encode(["a cat"], head="fc1", normalize_embeddings=True)  # caption vectors
"""

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file


def load_image(path, image_size, mean=0.5, std=0.5):
    """RGB, bicubic resize to (image_size, image_size), [0, 1], (x - mean) / std -> float32 (3, H, W)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())


class JasperImageEncoder(torch.nn.Module):
    """The export's sentence-transformers model plus its SigLIP tower: `encode_images(paths, head=None)`."""

    def __init__(self, folder, model=None, device="cpu"):
        super().__init__()
        from sentence_transformers import SentenceTransformer
        from transformers import SiglipVisionModel

        vision = os.path.join(folder, "vision")
        with open(os.path.join(vision, "jasper_image.json")) as file:
            self.meta = json.load(file)
        self.model = model or SentenceTransformer(folder, trust_remote_code=True, device=device)
        self.tower = SiglipVisionModel.from_pretrained(vision).to(device).eval()
        self.markers = load_file(os.path.join(vision, "markers.safetensors"))["markers"].to(device)
        self.device = device

    @torch.no_grad()
    def embed_pixels(self, pixel_values, head=None):
        """pixel_values (B, 3, H, W), SigLIP-normalised -> (B, d) L2-normalised vectors."""
        meta = self.meta
        batch = pixel_values.shape[0]
        transformer = self.model[0].auto_model
        ids = torch.tensor([meta["image_input_ids"]] * batch, device=self.device)
        mask = torch.ones_like(ids)
        start, token, end = meta["image_token_ids"]
        is_marker = (ids == start) | (ids == token) | (ids == end)  # may lie past the text vocabulary
        embeddings = transformer.get_input_embeddings()(torch.where(is_marker, torch.zeros_like(ids), ids))
        for index, marker in enumerate((start, token, end)):
            embeddings = torch.where((ids == marker)[..., None], self.markers[index].to(embeddings.dtype), embeddings)
        tokens = self.tower(pixel_values=pixel_values.to(self.device)).last_hidden_state
        rows = torch.nn.AdaptiveAvgPool2d((meta["image_tokens"], embeddings.shape[-1]))(tokens)
        is_image = ids == token
        rank = (torch.cumsum(is_image.long(), dim=1) - 1).clamp(0, meta["image_tokens"] - 1)
        gathered = torch.gather(rows, 1, rank[..., None].expand(-1, -1, rows.shape[-1]))
        embeddings = torch.where(is_image[..., None], gathered.to(embeddings.dtype), embeddings)
        hidden = transformer(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
        features = {"input_ids": ids, "attention_mask": mask, "token_embeddings": hidden}
        for module in list(self.model)[1:]:
            features = module(features, head=head) if type(module).__name__ == "JasperHeads" else module(features)
        return torch.nn.functional.normalize(features["sentence_embedding"], dim=-1)

    def encode_images(self, paths, head=None, batch_size=16):
        """Image files -> float32 numpy (N, d), rows L2-normalised, in input order."""
        out = []
        for start in range(0, len(paths), batch_size):
            pixels = torch.stack(
                [
                    load_image(p, self.meta["image_size"], self.meta["image_mean"], self.meta["image_std"])
                    for p in paths[start : start + batch_size]
                ]
            )
            out.append(self.embed_pixels(pixels, head=head).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
