"""What a deployed policy needs at run time and nothing else: the observation history and the
loader of an exported artifact. Imports torch and numpy only (no training code, no hydra)."""
