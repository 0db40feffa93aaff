"""Ray workers that own the models: actor + rollout + reference (one per device) and the critic."""
