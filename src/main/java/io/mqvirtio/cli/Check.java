package io.mqvirtio.cli;

import java.util.List;

/** The range checks picocli's type conversion leaves to us: each names its option in its message. */
final class Check {
    private Check() {}

    static int range(String option, int v, int min, int max) {
        if (v < min || v > max) {
            throw new UsageException(option + " must be in " + min + ".." + max + ", got " + v);
        }
        return v;
    }

    static double range(String option, double v, double min, double max) {
        if (!(v >= min && v <= max)) {
            throw new UsageException(option + " must be in " + min + ".." + max + ", got " + v);
        }
        return v;
    }

    static List<Integer> each(String option, List<Integer> values, int min, int max) {
        for (int v : values) {
            if (v < min || v > max) {
                throw new UsageException(option + ": each value must be in " + min + ".." + max + ", got " + v);
            }
        }
        return List.copyOf(values);
    }

    /** {@code v} if it is one of {@code allowed}; the message lists them. */
    static String oneOf(String option, String v, String... allowed) {
        for (String a : allowed) {
            if (a.equals(v)) {
                return v;
            }
        }
        throw new UsageException(option + " must be " + String.join(", ", List.of(allowed).subList(0, allowed.length - 1))
                + " or " + allowed[allowed.length - 1] + ", got '" + v + "'");
    }
}
