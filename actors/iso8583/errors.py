"""The ISO 8583 package's exceptions, rooted in ``Iso8583Error``.

Rule 1: error texts name the check that failed, never an account number, PIN or PIN block.
"""

from __future__ import annotations


class Iso8583Error(Exception):
    """Base of every error raised by ``actors.iso8583``."""


class FramingError(Iso8583Error):
    """A length-prefixed frame is empty, too long, or cut short."""


class MessageError(Iso8583Error):
    """An ISO 8583 message cannot be packed or unpacked, or lacks a required field."""


class LinkClosed(Iso8583Error):
    """The link is closed or not connected; the request was not sent."""
