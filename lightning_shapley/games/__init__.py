"""Games: ``n_players`` and a batched ``__call__(masks [m, n]) -> values [m]``."""

from lightning_shapley.games.base import Game, check_masks
from lightning_shapley.games.channel import ChannelGame
from lightning_shapley.games.restricted import RestrictedGame
from lightning_shapley.games.synthetic import PairwiseGame, SymmetricGame

__all__ = ["ChannelGame", "Game", "PairwiseGame", "RestrictedGame", "SymmetricGame", "check_masks"]
