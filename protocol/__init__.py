"""Sans-I/O SET/OPE protocol library: no sockets, no asyncio, no PKCS#11."""
