// WCAG 2.x contrast of every text on the page against its background (test_page.py).
// Returns [{what, ratio, need}]: need is 4.5, or 3 for large text (24 px, or 18.66 px bold).
() => {
  const channel = (value) => {
    const c = value / 255;
    return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  };
  const parse = (s) => s.match(/[\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const [r, g, b, a = 1] = parse(getComputedStyle(e).backgroundColor);
      if (a > 0) return [r, g, b];
    }
    return [255, 255, 255];
  };
  const ratio = (fg, bg) => {
    const [a, b] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
  };
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || el.getClientRects().length === 0) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden' || style.clipPath === 'inset(50%)') continue;
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    out.push({what: `${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}"`,
              ratio: ratio(parse(style.color), background(el)), need: large ? 3 : 4.5});
  }
  const input = document.getElementById('message');
  out.push({what: 'placeholder', need: 4.5,
            ratio: ratio(parse(getComputedStyle(input, '::placeholder').color), background(input))});
  return out;
}
