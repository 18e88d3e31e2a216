"""wschat's tests.

The suites that test the server over the wire (handshake, protocol, limits, hub,
app layer, cluster) use the `websockets` library as their client on purpose, an
independent implementation being the point there; the Playwright suites use its
sync client for their extra users, because Playwright's sync API holds their
thread's event loop; the suites that chat as a program would (test_client*,
test_howto) use :mod:`wschat.client`.
"""
