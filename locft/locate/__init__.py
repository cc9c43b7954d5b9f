"""`locft locate` as a library call: a short sweep that picks the edit location for a model.

For each candidate location (by default the MLP output projection at six depths spread over
the model, plus the current one), LocFT-BF trains on a seeded sample of the facts, from the
base weights each time (the [edit] recipe, with the batch shrunk so that an epoch has a few
steps), and the edited model is measured:

- general capability: lm-eval tasks (default wiki_bpb, bits per byte on 50 Wikipedia
  passages: the most sensitive of the offline suite, docs/experiments/quality/locate_embedded.md),
  candidate vs the base model's score (computed once, cached per base fingerprint); the worst
  task's drop counts;
- locality: token agreement with the base model's own answers on the fixed probe set plus
  the sample's own probes (base answers cached per base fingerprint); exact locality
  (a generation per probe) on request;
- reliability and generalization: greedy generation + normalized exact match on the sample's
  prompts and paraphrases.

`locft.policies.location.select_from_sweep` then applies the paper's priority (capability,
then locality, then generalization). `record_location` writes the pick into locft.toml,
keeping every other line as it was. Rounds train where `locft.engine.targets.choose_edit_location`
says: at a recorded pick first, else at the architecture's preset.

Modules: `candidates` (the locations to sweep, the seeded fact sample), `sweep` (`locate`:
train and measure every candidate), `report` (a candidate's numbers, the report and its
one-line note), `record` (writing the pick into locft.toml). Importing none of them imports
torch.
"""
