package io.mqvirtio.cli;

import io.mqvirtio.net.NetDevice;
import io.mqvirtio.net.QueueCounters;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * One served device's per-queue counters at one moment: what {@code /stats} serves as JSON, {@code /metrics} as
 * Prometheus text, and {@code mqvirtio stats} prints. Queue entries come in the device's order: pair 0 RX, pair 0
 * TX, pair 1 RX, ...
 */
record DeviceStats(String name, String socket, String backend, int pairs, boolean connected, List<Queue> queues,
        String dead, boolean logging, long dirtyPages, List<Capture> captures) {

    DeviceStats(String name, String socket, String backend, int pairs, boolean connected, List<Queue> queues) {
        this(name, socket, backend, pairs, connected, queues, null, false, 0, List.of());
    }

    /**
     * A queue pair's capture ({@code serve --capture}): frames written to its file, and frames left out (its writer
     * fell behind the guest, its disk hung or failed, or the file reached its size).
     */
    record Capture(int pair, long frames, long dropped) {}

    /**
     * One virtqueue: {@code direction} "rx" (host to guest, ring 2·pair) or "tx" (guest to host, ring 2·pair+1);
     * {@code method}: how its frames move to or from the host ("readv", "writev", "io_uring"; "" for none).
     */
    record Queue(int pair, String direction, long packets, long bytes, long drops, long errors, long kicks,
            long notifications, String method) {
        Queue(int pair, String direction, long packets, long bytes, long drops, long errors, long kicks,
              long notifications) {
            this(pair, direction, packets, bytes, drops, errors, kicks, notifications, "");
        }

        String label() {
            return direction + pair;
        }

        static final List<String> FIELDS = List.of("packets", "bytes", "drops", "errors", "kicks", "notifications");

        long get(String field) {
            return switch (field) {
                case "packets" -> packets;
                case "bytes" -> bytes;
                case "drops" -> drops;
                case "errors" -> errors;
                case "kicks" -> kicks;
                case "notifications" -> notifications;
                default -> throw new IllegalArgumentException(field);
            };
        }
    }

    /** A snapshot of {@code device} now (each counter read once). */
    static DeviceStats of(NetDevice device, String socket, String backend, boolean connected) {
        List<QueueCounters.Snapshot> c = device.counters();
        List<String> methods = device.ioMethods();
        List<Queue> q = new ArrayList<>(c.size());
        for (int i = 0; i < c.size(); i++) {
            QueueCounters.Snapshot s = c.get(i);
            q.add(new Queue(i / 2, i % 2 == 0 ? "rx" : "tx", s.packets(), s.bytes(), s.drops(), s.errors(), s.kicks(),
                    s.notifications(), methods.get(i)));
        }
        List<Capture> captures = new ArrayList<>();
        List<io.mqvirtio.capture.QueueCapture> running = device.captures();
        for (int i = 0; i < running.size(); i++) {
            captures.add(new Capture(i, running.get(i).captured(), running.get(i).dropped()));
        }
        return new DeviceStats(device.config().name(), socket, backend, device.pairs(), connected, List.copyOf(q),
                device.deadReason(), device.isLogging(), device.dirtyPages(), List.copyOf(captures));
    }

    Map<String, Object> toJson() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("name", name);
        m.put("socket", socket);
        m.put("backend", backend);
        m.put("pairs", pairs);
        m.put("connected", connected);
        if (dead != null) {
            m.put("dead", dead); // why the device serves no more (a worker that does not answer)
        }
        m.put("logging", logging); // rings log their writes for a live migration
        m.put("dirty_pages", dirtyPages);
        List<Object> l = new ArrayList<>();
        for (Queue q : queues) {
            Map<String, Object> e = new LinkedHashMap<>();
            e.put("pair", q.pair());
            e.put("direction", q.direction());
            for (String f : Queue.FIELDS) {
                e.put(f, q.get(f));
            }
            if (!q.method().isEmpty()) {
                e.put("method", q.method());
            }
            l.add(e);
        }
        m.put("queues", l);
        if (!captures.isEmpty()) {
            List<Object> c = new ArrayList<>();
            for (Capture k : captures) {
                Map<String, Object> e = new LinkedHashMap<>();
                e.put("pair", k.pair());
                e.put("frames", k.frames());
                e.put("dropped", k.dropped());
                c.add(e);
            }
            m.put("captures", c);
        }
        return m;
    }

    /**
     * The inverse of {@link #toJson}; a missing or mistyped field is an {@link IllegalArgumentException}, and strings
     * come back {@link #printable}.
     */
    static DeviceStats fromJson(Object o) {
        Map<?, ?> m = map(o, "device");
        List<Queue> q = new ArrayList<>();
        for (Object e : list(m.get("queues"), "queues")) {
            Map<?, ?> qm = map(e, "queue");
            q.add(new Queue((int) number(qm, "pair"), string(qm, "direction"), number(qm, "packets"), number(qm, "bytes"),
                    number(qm, "drops"), number(qm, "errors"), number(qm, "kicks"), number(qm, "notifications"),
                    string(qm, "method")));
        }
        List<Capture> c = new ArrayList<>();
        if (m.get("captures") != null) { // none while nothing is captured, and none from a serve before them
            for (Object e : list(m.get("captures"), "captures")) {
                Map<?, ?> cm = map(e, "capture");
                c.add(new Capture((int) number(cm, "pair"), number(cm, "frames"), number(cm, "dropped")));
            }
        }
        return new DeviceStats(string(m, "name"), string(m, "socket"), string(m, "backend"), (int) number(m, "pairs"),
                Boolean.TRUE.equals(m.get("connected")), List.copyOf(q), m.get("dead") == null ? null : string(m, "dead"),
                Boolean.TRUE.equals(m.get("logging")), m.get("dirty_pages") == null ? 0 : number(m, "dirty_pages"),
                List.copyOf(c));
    }

    static Map<?, ?> map(Object o, String what) {
        if (o instanceof Map<?, ?> m) {
            return m;
        }
        throw new IllegalArgumentException("expected an object for " + what + ", got " + o);
    }

    static List<?> list(Object o, String what) {
        if (o instanceof List<?> l) {
            return l;
        }
        throw new IllegalArgumentException("expected a list for " + what + ", got " + o);
    }

    static long number(Map<?, ?> m, String key) {
        Object v = m.get(key);
        if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte) {
            return ((Number) v).longValue();
        }
        throw new IllegalArgumentException("expected a whole number for '" + key + "', got " + v);
    }

    /** A string field of a reply, {@link #printable} (a missing one is empty). */
    static String string(Map<?, ?> m, String key) {
        Object v = m.get(key);
        return v == null ? "" : printable(v.toString());
    }

    /**
     * {@code s} with each control character (C0, DEL, C1) and Unicode format character (bidirectional overrides,
     * zero-width ones) replaced by '?'. What {@code mqvirtio stats} parses came from whoever answered at the address
     * it was given, and its names go to the user's terminal, where an escape sequence in them could clear or rewrite
     * the screen, retitle the window, or make some terminals answer as if the user had typed.
     */
    static String printable(String s) {
        StringBuilder b = null;
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (Character.isISOControl(c) || Character.getType(c) == Character.FORMAT) {
                if (b == null) {
                    b = new StringBuilder(s);
                }
                b.setCharAt(i, '?');
            }
        }
        return b == null ? s : b.toString();
    }
}
