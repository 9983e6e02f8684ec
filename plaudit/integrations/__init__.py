"""Adapters for RL trainers, each a few lines for the user and nothing but `plaudit.client`
underneath (no torch): `trl` (GRPOTrainer's reward_funcs) and `verl` (a custom reward
function). OpenRLHF needs no adapter: its `--remote_rm_url` speaks /get_reward."""
