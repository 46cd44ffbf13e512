"""The streams wired from config, and the supervisor that runs them."""
