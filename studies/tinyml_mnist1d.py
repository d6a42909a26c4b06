"""TinyML: search for the int8 network a microcontroller will run, within its flash and SRAM.

The target is a Cortex-M4 part with 64 KB of flash and 32 KB of SRAM (an STM32G431K8-class chip). The model
may take 48 KB of the flash (16 KB stay for the inference runtime and the application) and 24 KB of the SRAM
(8 KB for the stack and the I/O buffers); `flash_kb` and `sram_kb` are counted from the architecture alone, so
a network over either budget is rejected before any training. Every trained network is quantized to int8
with onnxruntime's static quantization (per-channel int8 weights, 8-bit activations calibrated on 256
training samples) and scored as int8: its validation accuracy and its latency in onnxruntime, the runtime
that runs it. The last 3 of the 15 epochs train with fake int8 quantization (QAT), so the weights sit on the
int8 grid when they ship.

The space is `micro` (a stem, 1-6 blocks of conv / dilated / depthwise-separable convs of 4-32 channels,
optional residuals, global pooling: about 120 to 44,000 parameters) on MNIST-1D (1-D signals of length 40,
10 classes, generated offline and cached).

Run with:  nasopt run studies/tinyml_mnist1d.py      (about 3-4 minutes on 2 CPU cores)
Then:      nasopt show tinyml_mnist1d                  (the front: int8 accuracy against int8 latency)
           nasopt export tinyml_mnist1d --trial N --int8 -o exports/tiny   (model.int8.onnx + manifest)
"""

import optuna

import nasopt
from nasopt.search_spaces.micro import MicroSpace

study = nasopt.StudySpec(
    name="tinyml_mnist1d",
    space=MicroSpace(),
    dataset="mnist1d",
    objectives={"int8_accuracy": "maximize", "int8_latency_ms": "minimize"},
    constraints={"flash_kb": 48, "sram_kb": 24},  # the model's share of 64 KB flash / 32 KB SRAM
    sampler=optuna.samplers.NSGAIISampler(population_size=10, seed=0),
    n_trials=30,
    train=nasopt.TrainConfig(epochs=15, batch_size=64, lr=0.05, weight_decay=1e-4, qat_epochs=3),
    measure=nasopt.MeasureConfig(threads=1),  # latency at one thread, as on a single-core part
)
