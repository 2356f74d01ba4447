"""The population engine: K runs of one example trained in lockstep by one compiled TensorFlow program.

Runs that share an example, batch size, loss and optimizer kind form a group and share one
program; inside a group each run has its own learning rate, schedule (constant or plateau),
clipping kind and threshold, scaler, seed and, while the group is small, activation. A group
trains as populations of K runs. A population's weights and optimizer slots are one stacked
[K, *shape] tensor per Keras variable and every op is batched over the run axis, so runs
never mix, and a run whose loss, gradient or updated weights turn non-finite stops at that
step without touching the others.

The arithmetic is the keras engine's, op for op, so the two differ by float rounding only (a
batched matmul sums in another order than Keras's 2-D matmul). tests/test_population.py
measures whole runs against each engine's own sensitivity to rounding; where training is
chaotic, rounding decides where a run parts from Keras, so tests/test_population_steps.py
also checks every step from Keras's own weights and optimizer slots, which chaos cannot hide.
Any other Keras model (a user `module:function` builder's) runs Keras's own layer code for every
run (`model.Graph`); models the engine cannot express (several inputs or outputs, trainable
variables that are not float32, a loss not averaged over the batch) are trained by the keras
engine, run by run, and say `engine="keras"`.

The modules, in the order a run's data flows through them:

* `model`: the Keras builder's model read as an `Architecture` (a Dense stack) or a `Graph`
  (any other model), and its initial weights; `convolution`: per-run Conv2D kernels as batched
  ops under `tf.vectorized_map`;
* `step`: the arithmetic of one step (forward pass, loss, clipping, optimizer update);
* `program`: the compiled initial evaluation and epoch of one group;
* `sizing`: K from the worker's memory, and how a group is cut into populations;
* `train`: one population from initial weights to outcomes; `plateau`: its per-run schedule;
* `engine`: `PopulationEngine`, which groups runs and schedules populations on threads.

The package exports what other modules use; a test that patches a name patches it in the
module whose code calls it (`sizing.available_host_memory`, `train.initial_model`)::

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import PopulationEngine
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"\\nepochs=1\\nseeds=[0, 1]', "d.toml")
    >>> outcomes = PopulationEngine().train(study, study.plan())
    >>> [o.engine for o in outcomes], [len(o.epoch_loss) for o in outcomes]
    (['population', 'population'], [1, 1])
"""

from .engine import PopulationEngine, shared_activations
from .model import Architecture, Graph, Unsupported, initial_model
from .program import Program, ProgramShape, program
from .sizing import CPU_MAX_K, GPU_MAX_K, concurrent_populations, population_size, populations
from .step import SLOTS, Step
from .train import pad_last_batch, train_population

__all__ = ["CPU_MAX_K", "GPU_MAX_K", "SLOTS", "Architecture", "Graph", "PopulationEngine", "Program", "ProgramShape", "Step",
           "Unsupported", "concurrent_populations", "initial_model", "pad_last_batch", "population_size",
           "populations", "program", "shared_activations", "train_population"]
