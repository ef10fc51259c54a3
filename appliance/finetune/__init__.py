"""Fine-tuning on the appliance: training data, retrieval-aware examples, LoRA jobs, adapters.

* :mod:`.rows` parses and validates a training file (chat or QA rows), pure;
* :mod:`.datasets` keeps imported files encrypted in the home, one key each (crypto-shredded on
  removal);
* :mod:`.examples` turns rows into (prompt, target) token sequences with the answer engine's own
  prompt code; :mod:`.context_index` runs the appliance's retrieval over a data set's contexts;
* :mod:`.jobs` (the job records), :mod:`.trainer` (the LoRA loop), :mod:`.checkpoint` (encrypted
  checkpoints) and :mod:`.runner` (one job at a time, policy watch, resume);
* the result is an adapter package (:mod:`secure.adapter`), merged into its base model in memory
  at load (:mod:`appliance.llm.adapter`).

``torch``, ``transformers`` and ``peft`` are imported lazily, inside the functions that train.
"""
