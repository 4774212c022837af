"""
JPEG files in, binary codes out, on the GPU
===========================================

The whole pipeline on one device: JPEG decoding (nvJPEG), VGG16, and the paper's post-CNN stages as
torch operations (:class:`~selconv.torch_encoder.TorchEncoder`) applied to each batch of conv maps
where the network left them, so that neither the pixels nor the conv maps are copied to the host.
Only the codes are.

With CUDA this runs on the GPU; without it the same code runs on the CPU (torch), as when this page
was built, which shows the API, not the speed (``benchmarks/results/gpu_pipeline.md`` has the GPU
rates).

Run: ``python examples/plot_gpu_codes.py`` (the learning set's conv maps cached in
``selconv-output/cache/``, shared with the other examples).
"""

# %%
# The device, and a binary pipeline fitted on the learning photos
# ----------------------------------------------------------------
# ``make_paper_pipeline(device=...)`` fits the mask, LocalPCA, the embedding and ITQ with torch
# kernels on that device ("torch" is torch on the CPU). The learning set goes through the host path
# (its maps are cached); the database will not.
import os
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

from selconv.datasets import load_sample
from selconv.evaluation import default_cache_dir
from selconv.extraction import ConvFeatureExtractor
from selconv.metrics import evaluate
from selconv.pipelines import make_paper_pipeline, rotation_settings
from selconv.torch_encoder import TorchEncoder

MAX_SIZE = 192 if os.environ.get("SELCONV_EXAMPLE_FAST") == "1" else 384
CACHE_DIR = default_cache_dir()  # $SELCONV_CACHE_DIR or selconv-output/cache: shared with `selconv demo`
cuda = torch.cuda.is_available()
DEVICE = "cuda" if cuda else "cpu"  # the extractor's device
STAGES = "cuda" if cuda else "torch"  # the post-CNN stages' device: torch kernels either way
print(f"extractor on {DEVICE}, post-CNN stages on {STAGES}")

dataset = load_sample()
learning = ConvFeatureExtractor(max_size=MAX_SIZE, cache_dir=CACHE_DIR).fit()
train_maps = learning.transform(dataset.training)
n_bits = 32  # 40 learning images allow at most 39 bits; with thousands, 64..512 as in the paper
rotation, note = rotation_settings(len(dataset.training), 512)
binary = make_paper_pipeline(512, mask="max", n_bits=n_bits, device=STAGES, **rotation)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # 40 learning images: far fewer than the paper's
    binary.fit(train_maps)

# %%
# The encoder as the extractor's head
# -----------------------------------
# ``decode="device"`` decodes JPEG files with nvJPEG on a GPU (batched across the worker threads);
# ``precision="bfloat16"`` halves the network's memory traffic; ``iter_extract(..., head=...)`` hands
# each batch of conv maps, still on the device, to the encoder and yields one row of codes per image,
# in input order. Query boxes are cropped on the CPU and take the same route from there.
# For a large collection on a GPU, also pass ``compile=True``, ``cuda_graphs=True``, ``pad_to_multiple=32``
# (images of nearby shapes share a zero-padded batch, with the same maps) and ``batch_size=64``: JPEG files ->
# codes then ran at 824-838 images/s on an H200 and 771-786 on H100s (run G of
# ``benchmarks/results/pipeline_profile.md``, 168 Oxford files cycled), against 328 eager, unpadded, at batch 32
# (run E, 210 files). For the few dozen photos here, compiling would take longer than it saves.
extractor = ConvFeatureExtractor(
    max_size=MAX_SIZE, device=DEVICE, precision="bfloat16" if cuda else "float32", decode="device"
).fit()
encoder = TorchEncoder(binary, device=STAGES)


def codes_of(images):
    stream = extractor.iter_extract(images, head=encoder.transform)
    return np.stack([codes for _, codes in stream])


started = time.perf_counter()
database_codes = codes_of(dataset.database_inputs())
seconds = time.perf_counter() - started
query_codes = codes_of(dataset.query_inputs())
print(
    f"{len(database_codes)} database images -> {database_codes.shape[1]}-byte codes in {seconds:.1f} s "
    f"({len(database_codes) / seconds:.1f} images/s on this machine)"
)

# %%
# Against the host path
# ---------------------
# The numpy pipeline on conv maps copied to the host gives the same codes, up to the few bits whose
# projection is within float32 rounding of zero (on the CPU the decoders agree exactly; nvJPEG's pixels
# differ slightly from libjpeg-turbo's, so on a GPU more bits may differ).
host_codes = binary.set_params(
    mask__device="cpu", pca__device="cpu", encode__device="cpu", itq__device="cpu"
).transform(learning.transform(dataset.database_inputs()))
differing = np.unpackbits(database_codes ^ host_codes).mean()
print(f"bits differing from the host path's codes: {differing:.4%}")

result = evaluate(query_codes, database_codes, dataset.ground_truth)
print(f"mAP of the {n_bits}-bit codes (Hamming ranking): {result.map:.4f}")

fig, ax = plt.subplots(figsize=(6, 3))
ax.bar(range(len(result.average_precisions)), result.average_precisions, color="tab:blue")
ax.set_xlabel("query")
ax.set_ylabel("average precision")
ax.set_ylim(0, 1)
ax.set_title(f"{n_bits}-bit codes computed on {STAGES}: AP per query (mAP {result.map:.3f})")
fig.tight_layout()
plt.show()
