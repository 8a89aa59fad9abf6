"""HTTP/1.1 on a relayed connection, sans-IO: bytes in, a verdict out (mitmproxy's sense).

``plan`` says what L7 work a connection needs (observation, request hooks),
decided once per connection; ``install.exchange_for`` turns it into an
exchange, or into nothing for L4. ``observe.HttpObserver`` only watches
(metrics); ``exchange.HttpExchange`` also holds each request head for hooks
and may rewrite or answer it. ``actions`` holds the values both speak;
``head`` the pure work on request heads. Whoever carries the connection
(``proxy.stream.Stream``, ``proxy.relay.PipeEnd``) feeds the exchange its
bytes and carries out the verdicts.
"""
