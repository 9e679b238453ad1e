package io.mqvirtio.net;

import java.util.HexFormat;

/** Small Ethernet helpers: MAC parsing and printing, and the frames the device makes itself. */
public final class Frames {
    private Frames() {}

    /** Parses "52:54:00:12:34:56"; throws IllegalArgumentException with the reason otherwise. */
    public static byte[] parseMac(String s) {
        String[] p = s.split(":");
        if (p.length != 6) {
            throw new IllegalArgumentException("MAC address '" + s + "' does not have six parts");
        }
        byte[] mac = new byte[6];
        for (int i = 0; i < 6; i++) {
            if (p[i].length() != 2) {
                throw new IllegalArgumentException("MAC address '" + s + "': part '" + p[i] + "' is not two hex digits");
            }
            try {
                mac[i] = (byte) Integer.parseInt(p[i], 16);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException("MAC address '" + s + "': part '" + p[i] + "' is not hex");
            }
        }
        if ((mac[0] & 1) != 0) {
            throw new IllegalArgumentException("MAC address '" + s + "' is a multicast address");
        }
        return mac;
    }

    public static String macString(byte[] mac) {
        return HexFormat.ofDelimiter(":").formatHex(mac, 0, 6);
    }

    /** A RARP request (RFC 903) broadcast from {@code mac}, as QEMU's announce sends it. */
    public static byte[] rarp(byte[] mac) {
        byte[] f = new byte[60];
        for (int i = 0; i < 6; i++) {
            f[i] = (byte) 0xff;
        }
        System.arraycopy(mac, 0, f, 6, 6);
        f[12] = (byte) 0x80; // ethertype 0x8035
        f[13] = 0x35;
        f[14] = 0; // hardware type 1 (Ethernet)
        f[15] = 1;
        f[16] = 0x08; // protocol type IPv4
        f[17] = 0;
        f[18] = 6;
        f[19] = 4;
        f[20] = 0; // opcode 3: request reverse
        f[21] = 3;
        System.arraycopy(mac, 0, f, 22, 6); // sender hardware address
        System.arraycopy(mac, 0, f, 32, 6); // target hardware address
        return f;
    }
}
