"""What the kiosk screen says, in plain words. One place, so a store can translate it."""

REASONS: dict[str, str] = {
    "malformed": "This is not a Dropline code. Please show your return QR code.",
    "unknown_key": "This kiosk can't check this voucher yet. Please ask a member of staff.",
    "bad_signature": "This voucher is not valid. Please contact the shop you bought from.",
    "expired": "This voucher has expired. Please contact the shop for a new one.",
    "wrong_store": "This voucher is for a different store.",
    "revoked": "This return was cancelled by the shop.",
    "already_used": "This code has already been used.",
    "no_compartment": "All lockers of this size are full. Please ask a member of staff.",
    "door_jammed": "The locker door would not open. Please ask a member of staff.",
    "door_not_closed": "The door was not closed. A member of staff will check it.",
    "bad_short_code": "That code is not right. Please check it and try again.",
    "unknown_code": "We could not find this code. Please check it, or show the QR code.",
    "needs_gateway": (
        "Typed codes can't be checked while the kiosk is offline. Please show the QR code."
    ),
    "pickup_expired": "The pickup period has ended. Please ask a member of staff.",
    "timed_out": "The kiosk waited too long and stopped. Please start again.",
    "cancelled": "Cancelled.",
    "printer_fault": "The printer is not working. Please ask a member of staff.",
}

STATES: dict[str, tuple[str, str]] = {
    "scanned": ("Checking your code…", ""),
    "verified": ("Code accepted", "One moment…"),
    "door_opening": ("Opening a door…", ""),
    "jammed": ("That door is stuck", "Trying another one…"),
    "door_open": ("Door {door} is open", "Put the parcel in and close the door."),
    "left_open": ("Please close door {door}", "The door has been open too long."),
    "door_closed": ("Door closed", "Saving…"),
    "await_bag": ("Please hand your parcel to the clerk", "Clerk: stick on label {bag}, scan it."),
    "await_tote": ("Clerk: scan the tote", "Put bag {bag} in the tote and scan the tote label."),
    "done": ("Thank you!", "Your return is accepted. Take your receipt."),
}

DONE: dict[str, tuple[str, str]] = {
    "dropoff": ("Thank you!", "Your return is accepted in door {door}. Take your receipt."),
    "counter": ("Thank you!", "Your return is accepted. Take your receipt."),
    "pickup": ("Enjoy your parcel!", "Please close door {door} if it is still open."),
    "load": ("Parcel loaded", "Parcel {parcel} is in door {door}."),
    "service": ("Door {door} opened", "Service: close the door when finished."),
}

IDLE = ("Scan your return or pickup code", "Hold the QR code under the camera, or type it below.")
OFFLINE = "Working offline: your drop-off is saved and sent when the connection is back."

CLERK_AUTH: dict[str, str] = {
    "wrong_pin": "Wrong PIN.",
    "locked": "Too many wrong PINs. The keypad is locked for a while.",
    "bad_pin": "A PIN is 4 to 8 digits.",
    "no_config": "No staff are set up for this store yet.",
}


def reason_text(reason: str | None) -> str:
    """Plain words for a rejection reason."""
    return REASONS.get(reason or "", "Something went wrong. Please ask a member of staff.")
