"""One edit round as a library call: the daemon's worker, `locft round run` and bench/ share it.

    freeze   the active fact revisions now, their digest, the promoted version; skip when the
             set is the one the promoted version was trained on (policies.schedule.decide_round)
    load     the base model (its fingerprint must be the store's)
    train    LocFT-BF from the BASE weights over ALL active facts (never only the new ones:
             replaying the whole set is what keeps old edits alive; retracted facts vanish
             because nothing is carried over from the previous version); with edit.replay_ratio
             the base model's own answers to generic questions are mixed in, never a probe
    snapshot the tuned tensors, written atomically; THEN the immutable Version row (candidate)
    gates    reliability (all active facts, or a seeded sample of gates.reliability_sample),
             generalization (paraphrases), locality (the facts' probes + a fixed probe set whose
             base answers are cached per base fingerprint), retention (facts the promoted version
             answered correctly that are still active), capability (lm-eval, candidate vs cached
             base scores) -> policies.gating.judge
    decide   promote (gates.promotion = auto), leave as candidate (manual), or reject; the gate
             report is appended to the version
    record   the round: outcome, per-phase timings, loss per epoch

Cancellation: `should_stop()` is polled at every training step and between phases; a stopped
round is recorded as interrupted, its unrecorded snapshot removed and a recorded but ungated
candidate gets a failed gate result, so it can never be promoted without --force.
A process killed outright (kill -9, OOM) leaves a 'running' round: `recover_rounds` (run by
the daemon, and by anyone taking the round lock) closes it the same way.

Modules: `plan` (freeze the fact set, decide whether to run; cheap, no torch), `phases` (the
phases in order, their progress reports and wall time), `run` (run_round: load, train,
snapshot, record, decide), `measure` (every gate measurement of the candidate), `outcome` (how
a round ended), `recovery` (the round lock and closing rounds a dead process left running).
"""
