"""USB device boot of Raspberry Pi SBCs, served only with files the BMC vouches for.

`relay.Relay` speaks the usbboot protocol to the SBC's boot ROM over a
`transport.UsbBus` (`pyusb_bus.PyUsbBus` on hardware, `simbus.SimBus` to the
simulated ROM in `simrom`) and takes every file from the BMC's manifest. See
docs/boot.md.
"""
