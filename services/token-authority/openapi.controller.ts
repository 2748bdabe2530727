import { Controller, Get, Header } from '@nestjs/common';
import { openApiDocument } from './openapi';

/** The REST contract, public: it holds nothing that is not in the repository. */
@Controller()
export class OpenApiController {
  private readonly document = openApiDocument();

  @Get('openapi.json')
  @Header('cache-control', 'public, max-age=3600')
  openApi() {
    return this.document;
  }
}
