"""setpay: cross-cutting pieces every process shares (configuration, logging, the CLI entry).

The layers themselves live in the top-level packages ``protocol`` (pure SET/OPE library),
``keystore`` (PKCS#11 HSM actor and its client), ``broker`` (RabbitMQ) and ``actors``.
"""

__version__ = "0.1.0"
SOFTWARE_ID = f"setpay/{__version__}"
