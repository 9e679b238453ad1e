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
        try {
            SdNotify.notify(state);
        } catch (ErrnoException | IllegalArgumentException e) {
            LOG.log(Level.WARNING, "cannot notify systemd ({0}): {1}", state.replace('\n', ' '), e.getMessage());
        }
    }
}
