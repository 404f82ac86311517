// Collects the Content-Security-Policy violations Chromium reports in every browser context
// made after the call (its console says "… violates the following Content Security Policy
// directive …"), so that a test can fail on any. Returns the list and the unwatched
// newContext, for a context whose refusals are expected.
export function watchCsp(browser) {
  const violations = [];
  const rawContext = browser.newContext.bind(browser);
  browser.newContext = async (options) => {
    const c = await rawContext(options);
    c.on('console', (m) => {
      if (/Content.Security.Policy/i.test(m.text())) violations.push(`${m.location().url}: ${m.text()}`);
    });
    return c;
  };
  return { violations, rawContext };
}
