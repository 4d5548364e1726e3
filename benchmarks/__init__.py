"""The harness: cells, suites, the resumable runner, the result store and the leaderboard."""
