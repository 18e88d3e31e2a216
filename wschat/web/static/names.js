// Name and message rules, as the server applies them (wschat/chat/names.py).
//
// The page checks a name while it is typed so that it can explain a rule
// before the server refuses it. The server decides: where this file cannot
// judge a character the way PRECIS does (joiners after a virama, the RFC 5892
// context rules, characters newer than the server's Unicode data), it lets the
// name through and shows the server's reason if the server refuses it.
//
// Lengths are counted in Unicode code points, on both sides: JavaScript's
// `[...text].length` equals Python's `len(text)` whatever the Unicode version,
// whereas grapheme clusters depend on it. 👨‍👩‍👧‍👦 counts 7.

export const MAX_NAME_LENGTH = 32;
export const MAX_MESSAGE_LENGTH = 4096;
// The page starts counting aloud from here, so the limit is never a surprise.
export const MESSAGE_WARN_AT = 3584;
const MAX_RAW_LENGTH = 256;
const MAX_COMBINING_MARKS = 4;

// Same lists as names.py.
const BLANK_LOOKING = new Set([0x115f, 0x1160, 0x3164, 0xffa0, 0x2800, 0x1d159]);
const SCRIPTS = [
  'Latin', 'Cyrillic', 'Greek', 'Armenian', 'Georgian', 'Hebrew', 'Arabic', 'Thaana',
  'Devanagari', 'Bengali', 'Gurmukhi', 'Gujarati', 'Oriya', 'Tamil', 'Telugu', 'Kannada',
  'Malayalam', 'Sinhala', 'Thai', 'Lao', 'Tibetan', 'Myanmar', 'Ethiopic', 'Khmer', 'Han',
  'Hiragana', 'Katakana', 'Hangul', 'Bopomofo',
];
const AUGMENTED = {
  Han: ['Japanese', 'Korean', 'Han with Bopomofo'],
  Hiragana: ['Japanese'],
  Katakana: ['Japanese'],
  Hangul: ['Korean'],
  Bopomofo: ['Han with Bopomofo'],
};
const WITH_LATIN = ['Japanese', 'Korean', 'Han with Bopomofo'];

const ZWJ = '\u200d';
const ZWNJ = '\u200c';
const KEYCAP = '\u20e3';
const BLACK_FLAG = 0x1f3f4;
const CANCEL_TAG = 0xe007f;
const EMOJI = /^\p{Emoji}$/u;
const PICTOGRAPHIC = /^\p{Extended_Pictographic}$/u;
const MODIFIER = /^\p{Emoji_Modifier}$/u;
const VARIATION_SELECTOR = /^[\ufe0e\ufe0f]$/u;
const IGNORABLE = /^[\p{Default_Ignorable_Code_Point}\p{Noncharacter_Code_Point}]$/u;
const CONTROL = /^\p{Cc}$/u;
const UNASSIGNED = /^\p{Cn}$/u;
const OTHER = /^[\p{Cf}\p{Co}\p{Cs}\p{Zl}\p{Zp}]$/u;
const MARK = /^[\p{Mn}\p{Me}]$/u;
const SPACE = /\p{Zs}/gu;
const COMMON = /^[\p{Script=Common}\p{Script=Inherited}]$/u;
const SCRIPT_PATTERNS = SCRIPTS.map((name) => [name, new RegExp(`^\\p{Script_Extensions=${name}}$`, 'u')]);
// PRECIS "OldHangulJamo": Hangul_Syllable_Type L, V or T.
const JAMO = /^[\u1100-\u11ff\ua960-\ua97c\ud7b0-\ud7c6\ud7cb-\ud7fb]$/u;
// RFC 5892 exceptions that are DISALLOWED, and the CONTEXTO ones (judged by the server).
const DISALLOWED_EXCEPTIONS = new Set([0x0640, 0x07fa, 0x302e, 0x302f, 0x3031, 0x3032, 0x3033, 0x3034, 0x3035, 0x303b]);
const CONTEXT_RULES = /^[\u00b7\u0375\u05f3\u05f4\u30fb\u0660-\u0669\u06f0-\u06f9]$/u;

/** Unicode code points in `text` (what both sides count). */
export const codePoints = (text) => {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
};

const hex = (char) => `U+${char.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}`;

const refused = (rule, reason) => ({ ok: false, rule, reason });

/**
 * Indexes (into the array of code points) of the invisible parts of emoji
 * sequences: a variation selector after an emoji, a ZWJ between two emoji,
 * the tags of a subdivision flag.
 */
export const emojiComponents = (chars) => {
  const allowed = new Set();
  chars.forEach((char, start) => {
    if (char.codePointAt(0) !== BLACK_FLAG) return;
    let end = start + 1;
    while (end < chars.length && chars[end].codePointAt(0) >= 0xe0020 && chars[end].codePointAt(0) < CANCEL_TAG) end += 1;
    if (end > start + 1 && end < chars.length && chars[end].codePointAt(0) === CANCEL_TAG) {
      for (let i = start + 1; i <= end; i += 1) allowed.add(i);
    }
  });
  chars.forEach((char, index) => {
    if (index === 0) return;
    const before = chars[index - 1];
    if (VARIATION_SELECTOR.test(char)) {
      if (EMOJI.test(before)) allowed.add(index);
    } else if (char === ZWJ) {
      const after = chars[index + 1] ?? '';
      if (PICTOGRAPHIC.test(after) && (PICTOGRAPHIC.test(before) || MODIFIER.test(before) || allowed.has(index - 1))) {
        allowed.add(index);
      }
    }
  });
  return allowed;
};

const checkCharacters = (text) => {
  const chars = [...text];
  const components = emojiComponents(chars);
  for (const [index, char] of chars.entries()) {
    if (CONTROL.test(char)) return refused('control', `your name contains a control character (${hex(char)})`);
    if (BLANK_LOOKING.has(char.codePointAt(0))) {
      return refused('blank', `your name contains ${hex(char)}, which looks blank: a name must be visible`);
    }
    if (components.has(index) || char === ZWJ || char === ZWNJ) continue;
    if (IGNORABLE.test(char)) return refused('invisible', `your name contains an invisible character (${hex(char)})`);
  }
  return null;
};

// RFC 8266's mapping: non-ASCII spaces to ASCII, trim, collapse, NFKC (applied
// twice, as the profile's idempotence check does).
const mapNickname = (text) => {
  let value = text;
  for (let pass = 0; pass < 2; pass += 1) {
    value = value.replace(SPACE, ' ').replace(/^ +| +$/g, '').replace(/ {2,}/g, ' ').normalize('NFKC');
  }
  return value;
};

// What PRECIS's FreeformClass refuses, as far as the page can tell.
const checkFreeform = (text) => {
  const chars = [...text];
  const components = emojiComponents(chars);
  for (const [index, char] of chars.entries()) {
    if (components.has(index)) continue;
    const code = char.codePointAt(0);
    if (char === ZWNJ || CONTEXT_RULES.test(char)) continue; // the server's context rules decide
    if (char === ZWJ) {
      // Allowed after a virama (a mark); anywhere else it joins nothing visible.
      if (index > 0 && MARK.test(chars[index - 1])) continue;
      return refused('joiner', `${hex(char)} ZERO WIDTH JOINER is only allowed between two emoji (as in 👨‍👩‍👧) or after a virama`);
    }
    if (UNASSIGNED.test(char)) return refused('unassigned', `${hex(char)} is not an assigned character`);
    if (JAMO.test(char)) {
      return refused('jamo', `${hex(char)} is a Hangul letter on its own (a jamo); write whole syllables, such as 한`);
    }
    if (IGNORABLE.test(char)) return refused('invisible', `your name contains an invisible character (${hex(char)})`);
    if (CONTROL.test(char)) return refused('control', `your name contains a control character (${hex(char)})`);
    if (DISALLOWED_EXCEPTIONS.has(code) || OTHER.test(char)) {
      return refused('disallowed', `${hex(char)} is not allowed in names`);
    }
  }
  return null;
};

const checkMarks = (name) => {
  const chars = [...name.normalize('NFD')];
  const components = emojiComponents(chars);
  const isMark = (index) =>
    MARK.test(chars[index]) && !components.has(index) && !(chars[index] === KEYCAP && index > 0 && EMOJI.test(chars[index - 1]));
  let index = 0;
  while (index < chars.length) {
    if (!isMark(index)) {
      index += 1;
      continue;
    }
    const start = index;
    while (index < chars.length && isMark(index)) index += 1;
    const run = chars.slice(start, index);
    if (start === 0 || chars[start - 1] === ' ') {
      return refused('leading_mark', `${hex(run[0])} is a combining mark with no letter before it to sit on`);
    }
    if (run.length > MAX_COMBINING_MARKS) {
      return refused('marks', `your name stacks ${run.length} combining marks on one letter; at most ${MAX_COMBINING_MARKS} are allowed`);
    }
    for (let i = 1; i < run.length; i += 1) {
      if (run[i] === run[i - 1]) return refused('marks', `your name puts ${hex(run[i])} twice on one letter`);
    }
  }
  return null;
};

const scriptsOf = (char) => {
  const found = SCRIPT_PATTERNS.filter(([, pattern]) => pattern.test(char)).map(([name]) => name);
  if (found.length === 0) return COMMON.test(char) ? null : new Set(['another script']);
  const augmented = new Set(found);
  for (const name of found) for (const extra of AUGMENTED[name] ?? []) augmented.add(extra);
  return augmented;
};

const intersect = (a, b) => new Set([...a].filter((x) => b.has(x)));
const scriptName = (set) => SCRIPTS.find((name) => set.has(name)) ?? [...set][0];

const checkScripts = (name) => {
  for (const word of name.split(' ')) {
    const letters = [...word].map((char) => [char, scriptsOf(char)]).filter(([, set]) => set !== null);
    if (letters.length === 0) continue;
    if (letters.map(([, set]) => set).reduce(intersect).size > 0) continue;
    const others = letters.map(([, set]) => set).filter((set) => !(set.size === 1 && set.has('Latin')));
    if (others.length > 0 && WITH_LATIN.some((script) => others.reduce(intersect).has(script))) continue;
    let [first, common] = letters[0];
    for (const [char, set] of letters.slice(1)) {
      const next = intersect(common, set);
      if (next.size === 0) {
        return refused(
          'mixed_script',
          `the word “${word}” mixes ${scriptName(common)} (${first}) and ${scriptName(set)} (${char}) letters, which can look alike; write each word in one script`,
        );
      }
      common = next;
    }
  }
  return null;
};

/**
 * Check a username as the server will.
 *
 * Returns `{ok: true, name, changed}` with the normal form the server will use
 * (`changed` when it differs from what was typed, e.g. fullwidth letters), or
 * `{ok: false, rule, reason}`; `rule` is one of names.py's RULES.
 */
export const checkName = (raw) => {
  if (typeof raw !== 'string') return refused('type', 'a name must be text');
  const tooLong = (count) =>
    refused('too_long', `your name is ${count} characters long; at most ${MAX_NAME_LENGTH} are allowed (emoji like 👨‍👩‍👧‍👦 count several)`);
  if (codePoints(raw) > MAX_RAW_LENGTH) return tooLong(codePoints(raw));
  const early = checkCharacters(raw);
  if (early) return early;
  const name = mapNickname(raw);
  if (!name) return refused('empty', 'type a name: at least one visible character');
  const problem = checkFreeform(name) ?? checkCharacters(name);
  if (problem) return problem;
  const count = codePoints(name);
  if (count > MAX_NAME_LENGTH) return tooLong(count);
  const rest = checkMarks(name) ?? checkScripts(name);
  if (rest) return rest;
  return { ok: true, name, changed: name !== raw.trim() };
};

/** Where a message stands against the limit: counted in code points, never cut. */
export const messageLength = (text) => {
  const count = codePoints(text);
  return {
    count,
    over: Math.max(0, count - MAX_MESSAGE_LENGTH),
    warn: count >= MESSAGE_WARN_AT,
  };
};
