"""How a client proves who it is and checks whom it talks to: TLS (with an
optional client certificate for mutual TLS) and a bearer token.

The token travels as ``authorization: Bearer <token>`` metadata added by a
channel interceptor rather than as gRPC call credentials, because gRPC only
sends call credentials over TLS, and a server may take tokens on plaintext
(e.g. on loopback, or behind a TLS-terminating proxy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

AUTHORIZATION = "authorization"
"""The metadata key the server reads the token from."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Security:
    """Channel security settings; the default is plaintext without a token."""

    ca: Path | None = None
    """PEM roots to verify the server with; setting it (or ``cert``) turns
    TLS on. With TLS and no ``ca`` the system roots are used."""
    cert: Path | None = None
    """PEM client certificate chain, for mutual TLS."""
    key: Path | None = None
    """PEM private key of ``cert``."""
    token: str | None = None
    """Bearer token from the server's tokens file."""
    tls: bool = False
    """Force TLS with the system roots even without ``ca``/``cert``."""
    server_name: str | None = None
    """Expect this name in the server's certificate instead of the host of
    the target (e.g. when dialling an IP address)."""

    @property
    def uses_tls(self) -> bool:
        """Whether channels are TLS."""
        return self.tls or self.ca is not None or self.cert is not None

    def _credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs its key (--cert with --key)")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )

    def _options(self, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return [*options, *extra]

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((AUTHORIZATION, f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        """A blocking channel to ``target``."""
        if self.uses_tls:
            channel = grpc.secure_channel(target, self._credentials(), self._options(options))
        else:
            channel = grpc.insecure_channel(target, options=list(options))
        if self.token:
            return grpc.intercept_channel(channel, _SyncToken(self._metadata()))
        return channel

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        """An asyncio channel to ``target`` (call inside the running loop)."""
        interceptors: list[Any] = []
        if self.token:
            md = self._metadata()
            interceptors = [_AioUnaryToken(md), _AioStreamToken(md), _AioUploadToken(md)]
        if self.uses_tls:
            return grpc.aio.secure_channel(
                target, self._credentials(), self._options(options), interceptors=interceptors
            )
        return grpc.aio.insecure_channel(target, options=list(options), interceptors=interceptors)


PLAINTEXT = Security()
"""No TLS, no token: the loopback default."""


def cli_security(args: Any) -> Security:
    """The Security of the CLI's ``--token/--ca/--cert/--key`` options (or
    their JOBSTREAM_* variables)."""

    def path(name: str) -> Path | None:
        value = getattr(args, name, None)
        return Path(value) if value else None

    return Security(
        ca=path("ca"), cert=path("cert"), key=path("key"), token=getattr(args, "token", None)
    )


def _with_token(details: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    """``details`` with the token added to its metadata."""
    # grpc.aio.Metadata iterates as (key, value) pairs, like a tuple of them.
    return details._replace(metadata=grpc.aio.Metadata(*(details.metadata or ()), *metadata))


class _CallDetails(grpc.ClientCallDetails):
    """A mutable stand-in: the sync API's details type has no ``_replace``."""

    def __init__(self, base: grpc.ClientCallDetails, metadata: Sequence[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = (*(base.metadata or ()), *metadata)
        self.credentials = base.credentials
        self.wait_for_ready = getattr(base, "wait_for_ready", None)
        self.compression = getattr(base, "compression", None)


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
):
    """Adds the token to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """See grpc.UnaryUnaryClientInterceptor."""
        return continuation(_CallDetails(client_call_details, self.metadata), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """See grpc.UnaryStreamClientInterceptor."""
        return continuation(_CallDetails(client_call_details, self.metadata), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        """See grpc.StreamUnaryClientInterceptor (uploads)."""
        return continuation(_CallDetails(client_call_details, self.metadata), request_iterator)


class _AioUnaryToken(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the token to every unary call of an asyncio channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """See grpc.aio.UnaryUnaryClientInterceptor."""
        return await continuation(_with_token(client_call_details, self.metadata), request)


class _AioStreamToken(grpc.aio.UnaryStreamClientInterceptor):
    """Adds the token to every server-streaming call of an asyncio channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        """See grpc.aio.UnaryStreamClientInterceptor."""
        return await continuation(_with_token(client_call_details, self.metadata), request)


class _AioUploadToken(grpc.aio.StreamUnaryClientInterceptor):
    """Adds the token to every client-streaming call (uploads)."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        """See grpc.aio.StreamUnaryClientInterceptor."""
        return await continuation(_with_token(client_call_details, self.metadata), request_iterator)
