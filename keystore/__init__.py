"""The keystore actor fronting a PKCS#11 HSM, and the async client other actors use."""
