package io.mqvirtio.cli;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.SdNotify;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * What serve takes from systemd (sd_listen_fds(3), sd_notify(3)): listening sockets passed from descriptor 3 on, for
 * this process only ({@code LISTEN_PID}), and readiness and stopping told to {@code NOTIFY_SOCKET}. Without those
 * variables nothing changes.
 */
final class Systemd {
    private static final Logger LOG = System.getLogger(Systemd.class.getName());
    static final int FIRST_FD = 3;

    /** One socket systemd passed: its descriptor and the name of its FileDescriptorName= (or "fd:N"). */
    record Passed(int fd, String name) {}

    private Systemd() {}

    /** The sockets systemd passed to this process, in order; empty when it passed none (or passed them to another). */
    static List<Passed> listenFds(Map<String, String> env, long pid) {
        String forPid = env.get("LISTEN_PID");
        String count = env.get("LISTEN_FDS");
        if (forPid == null || count == null) {
            return List.of();
        }
        long p;
        int n;
        try {
            p = Long.parseLong(forPid.trim());
        } catch (NumberFormatException e) {
            throw new UsageException("LISTEN_PID is not a number: " + forPid);
        }
        if (p != pid) {
            // meant for another process (the one that started us): the rest is not ours to judge, as sd_listen_fds
            // does not (a LISTEN_FDS left over with it refused serve's start)
            return List.of();
        }
        try {
            n = Integer.parseInt(count.trim());
        } catch (NumberFormatException e) {
            throw new UsageException("LISTEN_FDS is not a number: " + count);
        }
        if (n < 0 || n > 1024) {
            throw new UsageException("LISTEN_FDS=" + n + " is not 0..1024");
        }
        String[] names = env.getOrDefault("LISTEN_FDNAMES", "").split(":", -1);
        List<Passed> l = new ArrayList<>();
        for (int i = 0; i < n; i++) {
            String name = i < names.length && !names[i].isBlank() && !names[i].equals("unknown") ? names[i]
                    : "fd:" + (FIRST_FD + i);
            l.add(new Passed(FIRST_FD + i, name));
        }
        return l;
    }

    /** The shortest interval between watchdog pings: a WATCHDOG_USEC of 1 (a unit's "WatchdogSec=1us") is no spin. */
    static final long MIN_WATCHDOG_PING_MS = 10;
    /** The longest: a huge WATCHDOG_USEC (up to systemd's infinity, 2^64 - 1) still gets a ping an hour. */
    static final long MAX_WATCHDOG_PING_MS = 3_600_000;

    /**
     * How often serve tells systemd's watchdog that it lives ("WATCHDOG=1", sd_watchdog_enabled(3)): every half of
     * WATCHDOG_USEC, kept within {@link #MIN_WATCHDOG_PING_MS}..{@link #MAX_WATCHDOG_PING_MS}, when the variable is
     * meant for this process (WATCHDOG_PID unset or ours); 0 when nobody asked (unset, 0, another process's, or not
     * a number: a warning).
     */
    static long watchdogPingMillis(Map<String, String> env, long pid) {
        String usec = env.get("WATCHDOG_USEC");
        String forPid = env.get("WATCHDOG_PID");
        if (usec == null) {
            return 0;
        }
        try {
            if (forPid != null && Long.parseLong(forPid.trim()) != pid) {
                return 0; // the watchdog of the process that started us
            }
            long u = Long.parseUnsignedLong(usec.trim());
            if (u == 0) {
                return 0;
            }
            long half = Long.compareUnsigned(u, MAX_WATCHDOG_PING_MS * 2000) > 0 ? MAX_WATCHDOG_PING_MS : u / 2000;
            return Math.max(MIN_WATCHDOG_PING_MS, half);
        } catch (NumberFormatException e) {
            LOG.log(Level.WARNING, "WATCHDOG_USEC={0} WATCHDOG_PID={1} are not numbers: systemd's watchdog is not told "
                    + "that serve lives", usec, forPid);
            return 0;
        }
    }

    /**
     * What descriptor {@code fd} of this process is, as {@code /proc/self/fd} says ("socket:[...]", "pipe:[...]", a
     * file's path), or null when it is not open.
     */
    static String whatIs(int fd) {
        try {
            return java.nio.file.Files.readSymbolicLink(java.nio.file.Path.of("/proc/self/fd/" + fd)).toString();
        } catch (java.io.IOException e) {
            return null;
        }
    }

    /** Tells systemd (if it asked, through NOTIFY_SOCKET) {@code state}; a failure is a warning, not an error. */
    static void notify(String state) {
        notify(state, Level.WARNING);
    }

    /** As {@link #notify(String)}, a failure said at {@code failure}; returns false when it failed. */
    static boolean notify(String state, Level failure) {
        try {
            SdNotify.notify(state);
            return true;
        } catch (ErrnoException | IllegalArgumentException e) {
            LOG.log(failure, "cannot notify systemd ({0}): {1}", state.replace('\n', ' '), e.getMessage());
            return false;
        }
    }
}
