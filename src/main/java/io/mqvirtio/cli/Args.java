package io.mqvirtio.cli;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Command-line options: {@code --name value} or {@code --name=value}, flags without a value, and positional words.
 * Unknown options and malformed values are errors with a message saying which option; nothing is guessed.
 */
final class Args {
    private final Map<String, String> options = new HashMap<>();
    private final Map<String, List<String>> every = new HashMap<>(); // all values of a repeated option, in order
    private final List<String> positional = new ArrayList<>();

    /** @param flags option names that take no value */
    Args(String[] argv, Set<String> valued, Set<String> flags) {
        for (int i = 0; i < argv.length; i++) {
            String a = argv[i];
            if (a.startsWith("--")) {
                String name = a.substring(2);
                String value = null;
                int eq = name.indexOf('=');
                if (eq >= 0) {
                    value = name.substring(eq + 1);
                    name = name.substring(0, eq);
                }
                if (flags.contains(name)) {
                    if (value != null) {
                        throw new UsageException("--" + name + " takes no value");
                    }
                    options.put(name, "true");
                } else if (valued.contains(name)) {
                    if (value == null) {
                        if (i + 1 >= argv.length) {
                            throw new UsageException("--" + name + " needs a value");
                        }
                        value = argv[++i];
                    }
                    options.put(name, value);
                    every.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
                } else {
                    throw new UsageException("unknown option --" + name);
                }
            } else {
                positional.add(a);
            }
        }
    }

    List<String> positional() {
        return positional;
    }

    /** Every value given for an option that may be repeated (e.g. --vm), in command-line order. */
    List<String> strings(String name) {
        return every.getOrDefault(name, List.of());
    }

    boolean flag(String name) {
        return options.containsKey(name);
    }

    String string(String name, String dflt) {
        return options.getOrDefault(name, dflt);
    }

    int integer(String name, int dflt, int min, int max) {
        String v = options.get(name);
        if (v == null) {
            return dflt;
        }
        try {
            int n = Integer.parseInt(v);
            if (n < min || n > max) {
                throw new UsageException("--" + name + " must be in " + min + ".." + max + ", got " + v);
            }
            return n;
        } catch (NumberFormatException e) {
            throw new UsageException("--" + name + " needs a number, got '" + v + "'");
        }
    }

    double decimal(String name, double dflt, double min, double max) {
        String v = options.get(name);
        if (v == null) {
            return dflt;
        }
        try {
            double n = Double.parseDouble(v);
            if (!(n >= min && n <= max)) {
                throw new UsageException("--" + name + " must be in " + min + ".." + max + ", got " + v);
            }
            return n;
        } catch (NumberFormatException e) {
            throw new UsageException("--" + name + " needs a number, got '" + v + "'");
        }
    }

    List<Integer> integers(String name, String dflt, int min, int max) {
        List<Integer> out = new ArrayList<>();
        for (String p : string(name, dflt).split(",")) {
            try {
                int n = Integer.parseInt(p.trim());
                if (n < min || n > max) {
                    throw new UsageException("--" + name + ": each value must be in " + min + ".." + max + ", got " + p);
                }
                out.add(n);
            } catch (NumberFormatException e) {
                throw new UsageException("--" + name + " needs comma-separated numbers, got '" + p + "'");
            }
        }
        return out;
    }

    static final class UsageException extends RuntimeException {
        UsageException(String m) {
            super(m);
        }
    }
}
