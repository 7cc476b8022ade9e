"""A compromised source host, as a :class:`~tests.e2e.relay.Tamper` on the client-target leg.

A source host holds the keyring, so it can seal any state for the migration in flight. This
tamper stands for such a host's proxy: it takes the genuine blob the source proxy sealed for a
channel, checks it with the shared keyring to learn the migration's context (every check but
single use, so the target proxy still sees a fresh blob), and seals a state of its choosing for
that very context with a fresh salt. The state may be one the schema refuses: a key holder seals
whatever it likes (built with ``model_construct``, which skips validation). The target proxy
must then refuse it, or, for a state a legitimate source can write, hand its spice-server the
bytes that server will read.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.envelope import ANY_MIGRATION, Context, ExpectedContext, seal, verify
from gateway.keys import load_keyring
from schemas import ChannelType, StateModel

__all__ = ["CompromisedSource"]

#: Builds the state to seal from the genuine one the source sealed for the channel.
Chooser = Callable[[StateModel], StateModel]


class CompromisedSource:
    """Reseal chosen states, per channel type, for the context of the genuine blob."""

    def __init__(
        self,
        keyring: Path,
        vm_id: uuid.UUID,
        source_host: str,
        target_host: str,
        choices: Mapping[int, Chooser],
    ) -> None:
        self.keyring = load_keyring(keyring)
        self.vm_id = vm_id
        self.source_host = source_host
        self.target_host = target_host
        self.choices = dict(choices)
        #: The states sealed, by channel type, for the test to compare with what arrived.
        self.sealed: dict[int, StateModel] = {}

    @property
    def channel_types(self) -> frozenset[int]:
        return frozenset(self.choices)

    async def rewrite(self, channel_type: int, body: bytes) -> bytes:
        channel = ChannelType(channel_type)
        expected = ExpectedContext(
            channel_type=channel,
            channel_id=0,
            vm_id=self.vm_id,
            migration_id=ANY_MIGRATION,
            sources=frozenset({self.source_host}),
            target_host=self.target_host,
            schema_version=1,
        )
        genuine = verify(body, expected, self.keyring)
        # The key holder reads its own blob's state; no replay record is made for it here.
        state = self.choices[channel_type](genuine._opened.state)
        self.sealed[channel_type] = state
        context: Context = genuine.context
        return seal(state, context, self.keyring)
