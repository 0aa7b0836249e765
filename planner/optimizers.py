"""The optimizers a plan may name and the hyper-parameters the executor fixes (torch-free, so
``planner export`` writes the same ones into another engine's configuration).

Betas and epsilon are PyTorch's defaults, which are those of Kingma & Ba 2015 (sec. 2: beta1
0.9, beta2 0.999, eps 1e-8); AdamW's decoupled weight decay 0.01 is PyTorch's default for AdamW
(Loshchilov & Hutter 2019); "sgd-momentum" uses the heavy-ball momentum 0.9 that most recipes
use. The planner's memory model counts 2 state tensors for adam/adamw, 1 for sgd-momentum, 0
for sgd.
"""
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
ADAMW_WEIGHT_DECAY = 0.01
SGD_MOMENTUM = 0.9
