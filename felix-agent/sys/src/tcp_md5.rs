//! TCP MD5 signatures (RFC 2385) on BGP sockets.
