"""The `reward` and `vote` stages: reward-model scoring of every generated response, and the RMs' vote."""
