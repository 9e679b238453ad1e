package io.mqvirtio.memory;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.atomic.AtomicLong;

/**
 * How much guest memory may be mapped: per VM ({@link #perVm}) and by all VMs of the process together (a budget
 * shared by every session). A frontend's memory file may be sparse: a region of 15 TiB costs it nothing, and would
 * cost us that much address space, so every mapping is reserved here before it is made and released once it is
 * unmapped. Thread-safe.
 */
public final class MemoryBudget {
    private final long perVm;
    private final long total;
    private final AtomicLong reserved; // shared by every budget made from the same one with withPerVm

    /**
     * @param perVm the most one VM (one session) may have mapped at a time, in bytes
     * @param total the most all VMs sharing this budget may have mapped together, in bytes
     */
    public MemoryBudget(long perVm, long total) {
        if (perVm <= 0 || total <= 0) {
            throw new IllegalArgumentException("memory limits must be positive: " + perVm + ", " + total);
        }
        this.perVm = perVm;
        this.total = total;
        this.reserved = new AtomicLong();
    }

    private MemoryBudget(long perVm, long total, AtomicLong reserved) {
        this.perVm = perVm;
        this.total = total;
        this.reserved = reserved;
    }

    /** The same process-wide budget with another limit per VM (a --vm with its own max-memory). */
    public MemoryBudget withPerVm(long perVmLimit) {
        if (perVmLimit <= 0) {
            throw new IllegalArgumentException("memory limit must be positive: " + perVmLimit);
        }
        return new MemoryBudget(perVmLimit, total, reserved);
    }

    private static volatile MemoryBudget processDefault;

    /** The defaults, one budget for the whole process (what a server gets when nobody chose). */
    public static MemoryBudget processDefault() {
        MemoryBudget b = processDefault;
        if (b == null) {
            synchronized (MemoryBudget.class) {
                if (processDefault == null) {
                    processDefault = defaults();
                }
                b = processDefault;
            }
        }
        return b;
    }

    /**
     * The defaults: a VM may map as much as the host has memory (MemTotal; a guest bigger than its host is a
     * mistake or an attack, and an operator who overcommits on purpose says so with --max-memory), all VMs together
     * four times that. 64 GiB and 256 GiB if /proc/meminfo cannot be read.
     */
    public static MemoryBudget defaults() {
        long host = hostMemory();
        return new MemoryBudget(host, 4 * host);
    }

    /** The host's memory (MemTotal), or 64 GiB if unknown. */
    public static long hostMemory() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/meminfo"))) {
                if (line.startsWith("MemTotal:")) {
                    String[] f = line.split("\\s+");
                    return Long.parseLong(f[1]) * 1024;
                }
            }
        } catch (IOException | RuntimeException e) {
            // fall through
        }
        return 64L << 30;
    }

    public long perVm() {
        return perVm;
    }

    public long total() {
        return total;
    }

    public long reserved() {
        return reserved.get();
    }

    /**
     * Reserves {@code bytes} more for a VM that has {@code vmHas} mapped already.
     *
     * @throws GuestMemoryException if the VM's or the process's limit would be passed (nothing is reserved then)
     */
    public void reserve(long vmHas, long bytes) {
        if (bytes < 0 || vmHas < 0) {
            throw new IllegalArgumentException("negative reservation");
        }
        if (bytes > perVm - vmHas) {
            throw new GuestMemoryException("mapping " + human(bytes) + " more of guest memory would take "
                    + "this VM to " + human(vmHas + bytes) + ", above its limit of " + human(perVm)
                    + " (mqvirtio serve --max-memory)");
        }
        while (true) {
            long now = reserved.get();
            if (bytes > total - now) {
                throw new GuestMemoryException("mapping " + human(bytes) + " of guest memory would take all VMs of this "
                        + "process to " + human(now + bytes) + ", above their limit of " + human(total)
                        + " (mqvirtio serve --max-total-memory)");
            }
            if (reserved.compareAndSet(now, now + bytes)) {
                return;
            }
        }
    }

    /** Gives back what {@link #reserve} took, once it is unmapped. */
    public void release(long bytes) {
        if (bytes < 0 || reserved.addAndGet(-bytes) < 0) {
            throw new IllegalStateException("released more guest memory than was reserved");
        }
    }

    /** 1.5 GiB, 15 TiB: for messages. */
    static String human(long bytes) {
        String[] units = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
        int u = 0;
        double v = bytes;
        while (v >= 1024 && u < units.length - 1) {
            v /= 1024;
            u++;
        }
        if (u == 0) {
            return bytes + " bytes";
        }
        return (v == Math.rint(v) ? String.valueOf((long) v) : String.format(java.util.Locale.ROOT, "%.1f", v)) + " " + units[u];
    }
}
