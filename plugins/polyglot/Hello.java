// hello-java: reads {"args": [...], "kwargs": {...}} on stdin, answers JSON on stdout (no libraries).
import java.io.IOException;
import java.nio.charset.StandardCharsets;

public class Hello {
    public static void main(String[] argv) throws IOException {
        String input = new String(System.in.readAllBytes(), StandardCharsets.UTF_8).trim();
        String args = field(input, "args");
        String kwargs = field(input, "kwargs");
        String name = kwargs == null ? null : field(kwargs, "name");
        if (name == null || !name.startsWith("\"")) {
            name = "\"world\"";
        }
        System.out.print("{\"hello\": " + name + ", \"args\": " + (args == null ? "[]" : args)
            + ", \"lang\": \"java\", \"version\": \"" + System.getProperty("java.version") + "\"}");
    }

    /** The raw JSON text of a top-level member of an object, or null: enough JSON for this example. */
    static String field(String json, String key) {
        int depth = 0;
        boolean inString = false;
        for (int i = 0; i < json.length(); i++) {
            char c = json.charAt(i);
            if (inString) {
                if (c == '\\') { i++; } else if (c == '"') { inString = false; }
                continue;
            }
            if (c == '{' || c == '[') { depth++; continue; }
            if (c == '}' || c == ']') { depth--; continue; }
            if (c != '"' || depth != 1) { if (c == '"') { inString = true; } continue; }
            int end = i + 1;  // the key's closing quote: an escaped one (\") is part of the key
            while (end < json.length() && json.charAt(end) != '"') { end += json.charAt(end) == '\\' ? 2 : 1; }
            if (end >= json.length()) { return null; }
            String found = json.substring(i + 1, end);
            int colon = end + 1;
            while (colon < json.length() && Character.isWhitespace(json.charAt(colon))) { colon++; }
            if (colon < json.length() && json.charAt(colon) == ':' && found.equals(key)) {
                return value(json, colon + 1);
            }
            i = end;
        }
        return null;
    }

    static String value(String json, int start) {
        while (start < json.length() && Character.isWhitespace(json.charAt(start))) { start++; }
        int depth = 0;
        boolean inString = false;
        for (int i = start; i < json.length(); i++) {
            char c = json.charAt(i);
            if (inString) {
                if (c == '\\') { i++; } else if (c == '"') { inString = false; if (depth == 0) { return json.substring(start, i + 1); } }
                continue;
            }
            if (c == '"') { inString = true; continue; }
            if (c == '{' || c == '[') { depth++; continue; }
            if (c == '}' || c == ']') {
                if (depth == 0) { return json.substring(start, i).trim(); }
                depth--;
                if (depth == 0) { return json.substring(start, i + 1); }
                continue;
            }
            if (c == ',' && depth == 0) { return json.substring(start, i).trim(); }
        }
        return json.substring(start).trim();
    }
}
